"""Fixtures: tiny random models over the SmolLM2 vocabulary (`tokenizer` is in tests/conftest.py)."""

import pytest
import torch


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
