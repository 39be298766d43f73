"""Stage 1 on the real Qwen2.5-Coder-0.5B: its attention scores (down to -250 on every recent
key in layers 4 and 8) once gave NaN gradients with every layer linearized (slow)."""

import pytest
import torch

from lolcats_core import LinearizeConfig, linearize
from lolcats_core.training import TrainConfig, attention_transfer

pytestmark = pytest.mark.slow

TEXT = ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
        "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n") * 6


@pytest.mark.parametrize("sinks", [0, 4])
def test_stage1_on_qwen_layers_2_and_8_has_finite_losses_and_gradients(sinks, tmp_path):
    from qwen_slice import load_qwen_slice

    model, tok = load_qwen_slice([2, 8])
    linearize(model, LinearizeConfig(window=16, sinks=sinks))
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :192]
    batch = {"input_ids": ids.repeat(2, 1), "attention_mask": torch.ones(2, ids.shape[1], dtype=torch.long)}
    grads = []

    def keep_grads(name, p):
        p.register_hook(lambda g: grads.append((name, bool(torch.isfinite(g).all()))))

    for name, p in model.named_parameters():
        if "feature_map" in name:
            keep_grads(name, p)
    result, _ = attention_transfer(model, lambda epoch: [batch], [batch],
                                TrainConfig(max_steps=3, eval_every=3, lr=1e-2), tmp_path)
    assert result.steps == 3 and grads and all(ok for _, ok in grads), [n for n, ok in grads if not ok]
