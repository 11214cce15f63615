#!/usr/bin/env bash
# The GPU check of issue 25, as one script for a lent GPU machine:
#   1. a venv with the `gpu` extra (cupy-cuda12x) beside test and fast;
#   2. the CuPy-marked tests (`pytest -m cupy`), which skip on a machine without CUDA;
#   3. cases A, B, C (every engine) and the large case L (6400 positions, 20 slices, 128²;
#      LSQ-ML and gradient) timed on the device; the table goes to benchmarks/RESULTS_gpu.md
#      (target on one H100: <= 0.5 s per iteration for case L).
# Usage: bash benchmarks/gpu.sh            (from anywhere; the repository root is found)
# Environment: VENV (default .gpu-venv), WHEELHOUSE (a folder of wheels for a machine
# without a package index: pip then installs with --no-index from it), QUICK=1 (the
# --quick scans of A/B/C), DEVICE (default cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.gpu-venv}
DEVICE=${DEVICE:-cuda}
pip_opts=(-q)
[ -n "${WHEELHOUSE:-}" ] && pip_opts+=(--no-index --find-links "$WHEELHOUSE")

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install "${pip_opts[@]}" -e '.[test,fast,gpu]'
python - <<'PY'
import cupy
n = cupy.cuda.runtime.getDeviceCount()
name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode() if n else "none"
print(f"cupy {cupy.__version__}: {n} CUDA device(s), device 0: {name}")
PY

echo "== CuPy-marked tests"
python -m pytest -q -m cupy tests

quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
echo "== cases A, B, C on $DEVICE (every engine)"
python benchmarks/run.py --only standard "${quick[@]}" --device "$DEVICE" --cases A B C \
    --out benchmarks/RESULTS_gpu.md
echo "== case L on $DEVICE (6400 positions, 20 slices, 128²; lsqml, gradient)"
python benchmarks/run.py --only standard "${quick[@]}" --device "$DEVICE" --cases L --engines lsqml gradient \
    --update --out benchmarks/RESULTS_gpu.md
echo "wrote benchmarks/RESULTS_gpu.md"
