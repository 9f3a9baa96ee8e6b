#!/usr/bin/env bash
# On a GPU machine: install, run the whole test suite on the GPU, then the config sweep.
# Writes logs under ${OUT:-out}/.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -x ${PYTEST_ARGS:-tests} 2>&1 | tee "$OUT/pytest.log" | tail -25
[ "${SKIP_SWEEP:-0}" = 1 ] || python3 bench/sweep_configs.py --csv "$OUT/sweep.csv" 2>&1 | tee "$OUT/sweep.log"
