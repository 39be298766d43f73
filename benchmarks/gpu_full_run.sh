#!/usr/bin/env bash
# The full recipe and the ablation table on a machine with two GPUs, after the payload of
# benchmarks/stage_gpu_payload.sh is unpacked (~/stage) and its wheels installed (~/site).
#   GPU 0: the lolcats row alone with the gpu profile's budget (20M + 20M tokens): its stage
#          times are the ones the 15-minute target reads.
#   GPU 1: the teacher's evaluation and the four ablation rows concurrently, on the same data
#          with ABLATION_TOKENS per stage at 8 x 1024 tokens per step; then the generation
#          and end-to-end benchmarks' missing points.
# Usage: bash benchmarks/gpu_full_run.sh DIR   (long: start it with setsid and poll DIR/progress.txt;
# the results are DIR/{full,abl,logs}.tar.gz)
set -uo pipefail
OUT=$1
source benchmarks/gpu_env.sh
A=${ABLATION_TOKENS:-3000000}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt"
python3 benchmarks/quality.py prepare --out "$OUT/full" --profile gpu > "$OUT/prepare_log.txt" 2>&1
echo "prepared $(date +%T)" >> "$OUT/progress.txt"
CUDA_VISIBLE_DEVICES=0 python3 benchmarks/quality.py all --out "$OUT/full" --profile gpu --rows lolcats \
  > "$OUT/full_log.txt" 2>&1 &
full=$!
(
  export CUDA_VISIBLE_DEVICES=1
  python3 benchmarks/quality.py all --out "$OUT/abl" --profile gpu --set stage1.tokens=$A --set stage2.tokens=$A \
    --set stage1.batch_size=8 --set stage2.batch_size=8 --set stage1.eval_every=40 --set stage2.eval_every=40 \
    > "$OUT/abl_log.txt" 2>&1
  echo "ablations done $(date +%T)" >> "$OUT/progress.txt"
  timeout 240 python3 benchmarks/generation.py --out "$OUT/gen" --models lolcats --contexts 128 --steps 32 \
    --batches 1,512,2048 > "$OUT/gen_log.txt" 2>&1
  timeout 200 python3 benchmarks/smollm2_e2e.py --out "$OUT/e2e" --paths torch --gen-batches 1,64,256 \
    --new-tokens 128 > "$OUT/e2e_log.txt" 2>&1
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels > "$OUT/kernel_tests.txt" 2>&1
  echo "gpu1 benchmarks done $(date +%T)" >> "$OUT/progress.txt"
) &
wait $full
echo "full done $(date +%T)" >> "$OUT/progress.txt"
wait
cp "$OUT/abl/row-teacher.json" "$OUT/full/" 2>/dev/null
python3 benchmarks/quality.py report --out "$OUT/full" --profile gpu --rows teacher lolcats >> "$OUT/full_log.txt" 2>&1
for d in full abl; do
  tar -czf "$OUT/$d.tar.gz" -C "$OUT/$d" --exclude='*.safetensors' --exclude='*.arrow' --exclude='trainer' . 2>/dev/null
done
tar -czf "$OUT/logs.tar.gz" -C "$OUT" --exclude='*.tar.gz' --exclude=full --exclude=abl . 2>/dev/null
echo "all done $(date +%T)" >> "$OUT/progress.txt"
