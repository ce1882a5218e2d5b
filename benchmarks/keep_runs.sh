#!/usr/bin/env bash
# Copy a sweep's finished runs (those with a summary.json) into a folder kept in git, without their
# checkpoints: what `ldl report` reads (config, metrics, per-sample scores, summary) and meta.json.
# Copied back into the sweep folder, they are runs `ldl sweep` skips, so a long study can go on
# from another machine:  cp -r benchmarks/results/face_start_dlib/. sweeps/face_start_dlib/
#   benchmarks/keep_runs.sh sweeps/face_start_dlib benchmarks/results/face_start_dlib
set -euo pipefail
src=$1 dest=$2
kept=0
for summary in "$src"/*/summary.json; do
    [ -e "$summary" ] || continue
    run=$(dirname "$summary")
    mkdir -p "$dest/$(basename "$run")"
    for f in config.yaml meta.json metrics.jsonl samples.csv summary.json; do
        if [ -e "$run/$f" ]; then cp "$run/$f" "$dest/$(basename "$run")/"; fi
    done
    kept=$((kept + 1))
done
echo "$kept finished runs of $src kept in $dest"
