#!/bin/bash
# On the GPU machine, from the repo root: kernel tests, launch-config sweep, benchmarks.
# Usage: bash experiments/gpu_kernels.sh OUT_DIR   (wheels for fla in .whl/, see docs/performance.md)
set -o pipefail
OUT=${1:?out dir}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/shim && ln -sfn "$PWD/kernels" /tmp/shim/lolcats_kernels
export PYTHONPATH=/tmp/shim:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
for f in tests/kernels/test_*.py; do  # one process per file: a CUDA fault stays in its file
  timeout 120 python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/kernels "$f" 2>&1 | tee -a "$OUT/pytest_gpu.log" | tail -3
done
[ "${SWEEP:-1}" = 1 ] && timeout 300 python3 benchmarks/attention_gpu.py sweep 2>&1 | tee "$OUT/sweep.log"
timeout ${BENCH_TIMEOUT:-270} python3 benchmarks/attention_gpu.py run --out "$OUT" --max-len ${MAX_LEN:-131072} 2>&1 | tee "$OUT/bench.log"
