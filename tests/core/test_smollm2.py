"""The real SmolLM2-135M (dequantised from the bundled GGUF): a 4-layer slice end to end."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lolcats_core import LinearizeConfig, linearize
from lolcats_core.presets import weight_fingerprint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_slice(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    model.model.layers = model.model.layers[:4]
    model.config.num_hidden_layers = 4
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


def test_gguf_preset_is_dense_and_cached(smollm2_dir):
    files = {p.name for p in smollm2_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "lolcats_source.json"} <= files
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    assert len(weight_fingerprint(model)) == 16


def test_smollm2_slice_converts_runs_and_generates(smollm2_slice):
    model, tok = smollm2_slice
    text = "The capital of France is Paris. The capital of Italy is"
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
        linearize(model, LinearizeConfig(window=64, softmax_layers=[0]))
        same = model(ids).logits  # prompt shorter than the window: exactly softmax attention
        torch.testing.assert_close(same, ref, atol=1e-4, rtol=1e-4)
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 8)
    long_ids = torch.randint(3, 1000, (1, 150))
    with torch.no_grad():
        y = model(long_ids).logits
    assert torch.isfinite(y).all()
