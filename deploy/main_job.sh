#!/usr/bin/env bash
# The README's main job on this machine: linearize the bundled SmolLM2-135M (cpu-smoke
# profile, minutes on 2 cores), show the plan, the evaluation summary and generated text.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true \
       PREFECT_SERVER_ANALYTICS_ENABLED=false TOKENIZERS_PARALLELISM=false
LOLCATS=.venv/bin/lolcats
OUT=${LOLCATS_RUNS:-runs}
mkdir -p "$OUT"

echo "== plan"
$LOLCATS plan --model smollm2-135m
echo
echo "== linearize (cpu-smoke profile)"
$LOLCATS linearize --config configs/smollm2-135m.yaml --profile cpu-smoke --set output_dir="$OUT" | tee "$OUT/summary.md"
ckpt=$(grep -o 'checkpoint: .*' "$OUT/summary.md" | tail -1 | cut -d' ' -f2)
echo
echo "== generate from $ckpt"
$LOLCATS generate --model "$ckpt" --chat --prompt "Write one sentence about cats." --max-new-tokens 40
