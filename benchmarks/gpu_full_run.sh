#!/usr/bin/env bash
# Quality experiments and benchmarks on a machine with two GPUs, after the payload of
# benchmarks/stage_gpu_payload.sh is unpacked (~/stage) and its wheels installed (~/site).
#   GPU 0: the passkey experiment (the lolcats row under the gpu-long profile: 4096-token rows,
#          20% passkey samples of 1-4k tokens; the teacher's perplexity and passkey on the same
#          validation rows) beside the hedgehog-window ablation row (gpu profile, 20M tokens).
#   GPU 1: the generation benchmark at a 4224-token context (synthetic history) and the
#          SmolLM2 end-to-end benchmark (kernels vs PyTorch) alone on their GPU, then the
#          t2r-swap and hedgehog-swap ablation rows.
# Usage: bash benchmarks/gpu_full_run.sh DIR   (long: start it with setsid and poll
# DIR/progress.txt; `bash benchmarks/gpu_full_run.sh DIR --collect` packs what has finished into
# DIR/{abl,long,logs}.tar.gz at any time)
set -uo pipefail
OUT=$1
collect() {
  for d in abl long; do
    [ -d "$OUT/$d" ] && tar -czf "$OUT/$d.tar.gz" -C "$OUT/$d" --exclude='*.safetensors' --exclude='*.arrow' \
      --exclude='trainer' --exclude='data' . 2>/dev/null
  done
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" --exclude='*.tar.gz' --exclude=abl --exclude=long . 2>/dev/null
}
[ "${2:-}" = --collect ] && { collect; exit; }
progress() { echo "$* $(date +%T)" >> "$OUT/progress.txt"; }
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt"
python3 benchmarks/quality.py prepare --out "$OUT/abl" --profile gpu > "$OUT/prepare_abl.txt" 2>&1 &
p1=$!
python3 benchmarks/quality.py prepare --out "$OUT/long" --profile gpu-long > "$OUT/prepare_long.txt" 2>&1 &
p2=$!
# GPU 0 while the data is prepared: GPU time of each kernel under several launch configurations
CUDA_VISIBLE_DEVICES=0 timeout 170 python3 benchmarks/attention_gpu.py sweep > "$OUT/sweep.txt" 2>&1 &
sweep=$!
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 300 python3 benchmarks/generation.py --out "$OUT/gen" --contexts 4224 --history synthetic --steps 32 \
    --batches 16,32,64,128,256,512,1024 > "$OUT/gen_log.txt" 2>&1
  progress "generation done"
  timeout 360 python3 benchmarks/smollm2_e2e.py --out "$OUT/e2e" --paths triton,torch --gen-batches 1,64,256 \
    --new-tokens 128 --repeat 3 > "$OUT/e2e_log.txt" 2>&1
  progress "e2e done"
) &
bench=$!
wait $p1 $p2
progress "prepared"
wait $sweep
(
  export CUDA_VISIBLE_DEVICES=0
  python3 benchmarks/quality.py all --out "$OUT/long" --profile gpu-long --rows lolcats > "$OUT/long_log.txt" 2>&1 &
  python3 benchmarks/quality.py teacher --out "$OUT/long" --profile gpu-long --set 'eval.tasks=[]' \
    > "$OUT/long_teacher_log.txt" 2>&1 &
  python3 benchmarks/quality.py all --out "$OUT/abl" --profile gpu --rows hedgehog-window > "$OUT/abl0_log.txt" 2>&1 &
  wait
  progress "gpu0 rows done"
) &
gpu0=$!
wait $bench
CUDA_VISIBLE_DEVICES=1 python3 benchmarks/quality.py all --out "$OUT/abl" --profile gpu --rows t2r-swap hedgehog-swap \
  > "$OUT/abl1_log.txt" 2>&1
progress "gpu1 rows done"
wait $gpu0
collect
progress "all done"
