#!/usr/bin/env bash
# Issue 17's first-GPU check (the steps: benchmarks/gpu_check.py's docstring).
#
#   benchmarks/gpu_check.sh --vendor          # here, once: copy the GPU machine's missing packages
#   benchmarks/gpu_check.sh [--dry-run] [--budget SECONDS] [--steps 1,2,3,4,5] [OUT_DIR]
#
# OUT_DIR (log, copy of the results) defaults to $OUT, which the device tool returns, else
# gpu_check_out/.  Nothing is installed or fetched: the repository goes on PYTHONPATH, and what the
# GPU machine lacks (omegaconf and its parser runtime antlr4, both pure Python) comes from
# .gpu_deps/, which --vendor fills from this machine's interpreter and the device call carries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"

if [[ "${1:-}" == "--vendor" ]]; then
    rm -rf .gpu_deps && mkdir .gpu_deps
    "$python" - <<'EOF'
import importlib, pathlib, shutil
for name in ("omegaconf", "antlr4"):
    source = pathlib.Path(importlib.import_module(name).__file__).parent
    shutil.copytree(source, pathlib.Path(".gpu_deps") / name, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"{name}: {source} -> .gpu_deps/{name}")
EOF
    exit 0
fi

export PYTHONPATH="$root:$root/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ! "$python" -c "import omegaconf" 2>/dev/null; then
    echo "gpu_check: omegaconf is missing: run 'benchmarks/gpu_check.sh --vendor' where it is installed" \
         "and carry .gpu_deps" >&2
    exit 2
fi
exec "$python" benchmarks/gpu_check.py "$@"
