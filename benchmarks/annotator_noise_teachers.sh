#!/usr/bin/env bash
# Issue 19's teacher-distilled student, step 1: one AffectNet+-style teacher per noise setting of
# experiments/sweeps/annotator_noise.yaml, each learning from that setting's noisy training labels
# (data.noise.seed 0, the labels every run of the main sweep trains on), then its AffectNet+-layout
# copy data/synth32-plus-<setting>: the records hold the clean labels and the teacher's soft labels,
# noise.csv the labels it learnt from.  Step 2 trains the students:
#   ldl sweep experiments/sweeps/annotator_noise_distill.yaml --workers 2
# About 2 minutes a teacher on 2 cores (ResNet-18 and -50 members at 32 px, width 16).
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A noise=(
  [none]="data.noise.type=none"
  [ann1]="data.noise.type=annotator data.noise.temperature=1.0"
  [sym16]="data.noise.type=symmetric data.noise.rate=0.16"
  [inst16]="data.noise.type=instance data.noise.rate=0.16"
  [ann2]="data.noise.type=annotator data.noise.temperature=2.0"
  [sym29]="data.noise.type=symmetric data.noise.rate=0.29"
  [inst29]="data.noise.type=instance data.noise.rate=0.29"
)
for setting in none ann1 sym16 inst16 ann2 sym29 inst29; do
  # shellcheck disable=SC2086  # the settings are lists of overrides
  python -m ldl.cli teacher train "teachers/synth32-$setting" -c experiments/synthetic/memorisation.yaml \
      log.progress=false ${noise[$setting]}
  python -m ldl.cli teacher label "teachers/synth32-$setting" --out "data/synth32-plus-$setting"
done
