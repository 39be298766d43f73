#!/usr/bin/env bash
# Quality run on the GPU machine (after the offline payload of experiments/README.md is unpacked
# into ~/stage and its wheels into ~/site). Usage: bash experiments/gpu_quality.sh OUT_DIR [--set k=v ...]
set -uo pipefail
OUT=$1; shift
source experiments/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
# kernel tests on the GPU, alongside (bounded)
(timeout 200 python3 -m pytest -q tests/kernels -p no:cacheprovider > "$OUT/kernel_tests.txt" 2>&1; echo "exit $?" >> "$OUT/kernel_tests.txt") &
timeout 450 python3 benchmarks/quality.py all --out "$OUT/q" --profile gpu "$@" > "$OUT/quality_log.txt" 2>&1
[ -f "$OUT/q/results.md" ] || python3 benchmarks/quality.py report --out "$OUT/q" --profile gpu "$@" >> "$OUT/quality_log.txt" 2>&1
wait
cp "$OUT/q/results.md" "$OUT/" 2>/dev/null
tar -czf "$OUT/quality.tar.gz" -C "$OUT/q" --exclude='*.safetensors' --exclude='*.arrow' --exclude='trainer' . 2>/dev/null
rm -rf "$OUT/q"
