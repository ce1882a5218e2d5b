#!/usr/bin/env bash
# CE vs LDLVA (fast, faithful) on the synthetic set with symmetric noise; one run per method
# and seed, sequentially on this machine.  Usage: benchmarks/noisy_study.sh RATE "SEEDS" [overrides...]
set -euo pipefail
rate=${1:-0.3}; seeds=${2:-0}; shift 2 || true
out=benchmarks/results/noisy_study-$(hostname)
mkdir -p "$out"
for seed in $seeds; do
  for method in "ce" "ldlva method.ldlva.mode=fast" "ldlva method.ldlva.mode=faithful"; do
    name=$(echo "$method" | sed 's/method.ldlva.mode=//; s/ /-/g')
    ldl train -c experiments/synthetic/quickstart.yaml method.name=$method seed=$seed \
      data.noise.type=symmetric data.noise.rate=$rate log.progress=false log.wandb=disabled \
      run.dir="$out/$name-r$rate-s$seed" "$@" > "$out/$name-r$rate-s$seed.log" 2>&1
  done
done
