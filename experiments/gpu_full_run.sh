#!/usr/bin/env bash
# The device session's work, one step after another on GPU 0, after the payload of
# experiments/README.md is unpacked (~/stage) and its wheels installed (~/site).
# Steps (any of them, in the order given):
#   tests      the kernel tests, one process per file; if any fails, the rows that follow train
#              on the PyTorch path (LOLCATS_KERNELS=torch)
#   bench      the per-kernel sweep and the attention benchmark to 32k with the dk/dv kernel on
#              whole 64-key blocks (before) and on tiles of 32 keys (after; docs/performance.md)
#   passkey    the gpu-passkey recipe (8192-token rows, the teacher's 4 retrieval layers kept as
#              softmax, 20M + 20M tokens) with lm-eval, then the teacher's perplexity and passkey
#              on its data (the teacher's lm-eval does not depend on the data: docs/results.md)
#   passkey30  the same recipe with more and longer passkey samples (30%, 4k and 8k tokens), to
#              see whether the student can retrieve from the start of an 8k prompt, where the
#              teacher cannot (docs/results.md: passkey 8192 @ depth 0)
# Carry the fla-core wheel (.whl/) with the call that runs `bench`.
# Usage: bash experiments/gpu_full_run.sh DIR STEP...   (long: start it with setsid, then poll
# DIR/progress.txt back to back: the machine is released 30 s after a call returns, and with it
# everything in DIR. `bash experiments/gpu_full_run.sh DIR --collect` packs the finished rows
# (no weights, no data) into DIR/{passkey,passkey30}.tar.gz and the logs into DIR/logs.tar.gz.)
set -uo pipefail
OUT=$1; shift
export CUDA_VISIBLE_DEVICES=0
collect() {
  for d in passkey passkey30; do
    [ -d "$OUT/$d" ] && tar -czf "$OUT/$d.tar.gz" -C "$OUT/$d" --exclude='*.safetensors' --exclude='*.arrow' \
      --exclude='trainer' --exclude='data' . 2>/dev/null
  done
  (cd "$OUT" && tar -czf logs.tar.gz ./*.txt bench-*/*.json 2>/dev/null)
}
[ "${1:-}" = --collect ] && { collect; exit; }
progress() { echo "$* $(date +%T)" >> "$OUT/progress.txt"; }
row() {  # NAME [--set ...]: one lolcats row of the gpu-passkey profile with lm-eval
  local name=$1; shift
  mkdir -p "$OUT/$name"
  python3 benchmarks/quality.py row --row lolcats --out "$OUT/$name" --profile gpu-passkey "$@" \
    > "$OUT/${name}_log.txt" 2>&1
  progress "$name row done (rc $?)"
}
step_tests() {
  for f in tests/kernels/test_*.py; do  # one process per file: a CUDA fault stays in its file
    timeout 150 python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/kernels "$f" \
      >> "$OUT/kernel_tests.txt" 2>&1 || touch "$OUT/kernel_tests.failed"
  done
  [ -f "$OUT/kernel_tests.failed" ] && { export LOLCATS_KERNELS=torch; progress "kernel tests failed: PyTorch path"; }
  progress "kernel tests done"
}
step_bench() {  # the per-kernel sweep, then fwd+bwd to 32k with the dk/dv launch before (whole
  # blocks, 8 warps) and after (tiles of 32 keys, 4 warps) session 5's sweep
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
  timeout 300 python3 benchmarks/attention_gpu.py sweep > "$OUT/sweep.txt" 2>&1
  mkdir -p "$OUT/bench-before" "$OUT/bench-after"
  LOLCATS_DKV_SPLIT=1 LOLCATS_DKV_LAUNCH=8,2 timeout 300 python3 benchmarks/attention_gpu.py run \
    --out "$OUT/bench-before" --max-len 32768 > "$OUT/bench_before.txt" 2>&1
  timeout 300 python3 benchmarks/attention_gpu.py run --out "$OUT/bench-after" --max-len 32768 \
    > "$OUT/bench_after.txt" 2>&1
  progress "kernel sweep and benchmarks done"
}
step_passkey() {
  row passkey
  python3 benchmarks/quality.py teacher --out "$OUT/passkey" --profile gpu-passkey --set 'eval.tasks=[]' \
    > "$OUT/teacher_log.txt" 2>&1
  progress "teacher done (rc $?)"
}
step_passkey30() {
  row passkey30 --set 'data.mix={sharegpt: 0.7, passkey: 0.3}' --set 'data.passkey_lengths=[4096,8192]'
}
source experiments/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt"
for s in "$@"; do "step_$s"; done
collect
progress "all done"
