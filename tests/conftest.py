"""Shared test setup: offline environment, tiny random models, the real SmolLM2 tokenizer/model."""

import os
import sys
from pathlib import Path

# deploy/ (the stack's modules) on the path: its offline switches apply to every test process,
# set before anything imports huggingface_hub, prefect or mlflow.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from stack_config import apply_offline_env  # noqa: E402

apply_offline_env()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton reads this when a kernel is decorated: set it before any test imports the kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import make_tiny_config  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Directory of a tiny random Llama saved with save_pretrained (a local 'base model')."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(make_tiny_config()).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """(base, data): the flow tests' tiny base model (tests/service/tiny.py: a random 2-layer
    Llama with the SmolLM2 tokenizer), saved once, and a data folder shared by the tests that run
    pipeline steps on it (as their `data.cache_dir`, data of the same config is prepared once)."""
    from service.tiny import make_tiny_base

    root = tmp_path_factory.mktemp("tiny-base")
    return make_tiny_base(root), root / "data"


@pytest.fixture(scope="session")
def smollm2_dir():
    """The dequantised SmolLM2-135M (cached across runs under $LOLCATS_CACHE)."""
    from lolcats_core.presets import smollm2_dir as _dir

    return _dir()


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    """The real SmolLM2 tokenizer, as the smollm2-135m preset provides it (eos/pad <|im_end|>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)
