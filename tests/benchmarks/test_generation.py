"""benchmarks/generation.py: a synthetic history stands in for a prefill of the same length."""

import sys
from pathlib import Path

import pytest
import torch

from lolcats_core import LinearizeConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import generation  # noqa: E402


@pytest.mark.parametrize("kind", ["softmax", "lolcats"])
def test_generate_continues_a_synthetic_history(kind):
    model = generation.build(kind, generation.TINY, torch.float32, torch.device("cpu"),
                             LinearizeConfig(window=4, feature_dim=8))
    cache = generation.synthetic_cache(model, batch=2, length=20)
    ids = torch.randint(3, 500, (2, 21))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                         do_sample=False, pad_token_id=0, past_key_values=cache)
    assert out.shape == (2, 24)
    # only the prompt's last token and the generated ones went through the model
    assert cache.get_seq_length() == 23
    if kind == "lolcats":
        assert all(layer.seen == 23 for layer in cache.layers)
