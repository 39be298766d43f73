#!/usr/bin/env bash
# One device session on a machine with two GPUs, after the payload of
# benchmarks/stage_gpu_payload.sh is unpacked (~/stage), its wheels installed (~/site) and the
# fla-core wheel carried in .whl/ (see docs/performance.md).
#   GPU 0: the lolcats row with the teacher's 4 retrieval layers kept as softmax (gpu profile,
#          20M + 20M tokens, lm-eval; passkey answers end with a full stop), then the teacher's
#          perplexity and passkey on that data.
#   GPU 1: kernel tests with the dq launch every earlier row used (4, 2) (the gate for
#          training), again with the default launch policy (`dq_launch_for`: (4, 1) at model
#          sizes), the (4, 1) check plain and under compute-sanitizer, the attention benchmark
#          1k-128k with the policy and 1k-32k with (4, 2); then the hedgehog-swap ablation row
#          at 20M tokens on the data of the other 20M rows (no full stop).
# Training uses dq (4, 2) and falls back to the PyTorch path if its kernel tests fail.
# Session 3 ran this script's earlier version (commit 8149939); session 2's as of 406768c.
# Usage: bash benchmarks/gpu_full_run.sh DIR   (long: start it with setsid and poll
# DIR/progress.txt; `bash benchmarks/gpu_full_run.sh DIR --collect` packs what has finished into
# DIR/{abl,ret,logs}.tar.gz and the retrieval row's adapters into DIR/adapter-*.tar at any time)
set -uo pipefail
OUT=$1
collect() {
  for d in abl ret; do
    [ -d "$OUT/$d" ] && tar -czf "$OUT/$d.tar.gz" -C "$OUT/$d" --exclude='*.safetensors' --exclude='*.arrow' \
      --exclude='trainer' --exclude='data' . 2>/dev/null
  done
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" --exclude='*.tar.gz' --exclude='*.tar' --exclude=abl --exclude=ret . 2>/dev/null
  # the adapters (feature maps, gates, LoRA: ~8-12 MB each) for CPU analysis, e.g.
  # benchmarks/needle_capacity.py --student (one file each: the copy-back limit is 16 MiB a file)
  for m in "$OUT"/ret/runs/*/stage[12]-*/model; do
    [ -d "$m" ] || continue
    stage=$(basename "$(dirname "$m")" | cut -d- -f1)
    tar -cf "$OUT/adapter-retrieval-$stage.tar" -C "$(dirname "$m")" model
  done
}
[ "${2:-}" = --collect ] && { collect; exit; }
progress() { echo "$* $(date +%T)" >> "$OUT/progress.txt"; }
kernels_or_torch() {  # wait for the gate's kernel tests; train on the PyTorch path if they failed
  while [ ! -f "$OUT/kernel_tests.done" ]; do sleep 5; done
  [ -f "$OUT/kernel_tests.ok" ] || { export LOLCATS_KERNELS=torch; progress "kernel tests failed: PyTorch path"; }
}
kernel_tests() {  # LOG: one process per file, so that a CUDA fault stays in its file
  local failed=0
  for f in tests/kernels/test_*.py; do
    echo "== $f" >> "$1"
    timeout 150 python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/kernels "$f" >> "$1" 2>&1 || failed=1
  done
  return $failed
}
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt"
mkdir -p "$OUT/ret" "$OUT/abl" "$OUT/k" "$OUT/k42"
(python3 benchmarks/quality.py prepare --out "$OUT/abl" --profile gpu --set data.passkey_stop=false \
  > "$OUT/prepare_abl.txt" 2>&1; touch "$OUT/prepare_abl.done") &
(
  export CUDA_VISIBLE_DEVICES=0
  python3 benchmarks/quality.py prepare --out "$OUT/ret" --profile gpu > "$OUT/prepare_ret.txt" 2>&1
  kernels_or_torch
  export LOLCATS_DQ_LAUNCH=4,2
  python3 benchmarks/quality.py row --row lolcats --out "$OUT/ret" --profile gpu \
    --set linearize.softmax_layers=retrieval:4 > "$OUT/ret_log.txt" 2>&1
  progress "retrieval-layers row done"
  python3 benchmarks/quality.py teacher --out "$OUT/ret" --profile gpu --set 'eval.tasks=[]' \
    > "$OUT/teacher_log.txt" 2>&1
  progress "teacher (ppl, passkey) done"
) &
gpu0=$!
(
  export CUDA_VISIBLE_DEVICES=1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  LOLCATS_DQ_LAUNCH=4,2 kernel_tests "$OUT/kernel_tests.txt" && touch "$OUT/kernel_tests.ok"
  touch "$OUT/kernel_tests.done"
  progress "kernel tests, dq (4, 2): $([ -f "$OUT/kernel_tests.ok" ] && echo passed || echo FAILED)"
  kernel_tests "$OUT/kernel_tests_policy.txt" && policy=passed || policy=FAILED
  progress "kernel tests, dq policy: $policy"
  timeout 60 python3 benchmarks/dq_launch_check.py --launch 4,1 > "$OUT/dq_launch_check.txt" 2>&1
  timeout 150 compute-sanitizer --tool memcheck python3 benchmarks/dq_launch_check.py --launch 4,1 \
    > "$OUT/dq_launch_memcheck.txt" 2>&1
  progress "dq check done"
  PYTHONPATH=$PYTHONPATH:/tmp/site timeout 400 python3 benchmarks/attention_gpu.py run --out "$OUT/k" \
    > "$OUT/bench.txt" 2>&1
  PYTHONPATH=$PYTHONPATH:/tmp/site LOLCATS_DQ_LAUNCH=4,2 timeout 200 python3 benchmarks/attention_gpu.py run \
    --out "$OUT/k42" --max-len 32768 > "$OUT/bench42.txt" 2>&1
  progress "kernels done"
  kernels_or_torch
  while [ ! -f "$OUT/prepare_abl.done" ]; do sleep 5; done
  export LOLCATS_DQ_LAUNCH=4,2
  python3 benchmarks/quality.py all --out "$OUT/abl" --profile gpu --rows hedgehog-swap --set data.passkey_stop=false \
    > "$OUT/abl_log.txt" 2>&1
  progress "hedgehog-swap done"
) &
wait $gpu0
wait
collect
progress "all done"
