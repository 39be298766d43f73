"""The fast paths of training compute what the plain ones do: chunked cross-entropy, layers
recomputed in the backward (gradient checkpointing), compiled layers, the one-softmax hedgehog."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from helpers import make_tiny_config, randomize_attention
from lolcats_core import LinearizeConfig, LoraSettings, add_lora, linearize
from lolcats_core.errors import ConfigError
from lolcats_core.feature_maps import Hedgehog, _project
from lolcats_core.model_parts import base_model
from lolcats_core.training import TrainConfig, chunked_loss, execution
from lolcats_core.training.execution import checkpointed_layers, compiled_layers, stage2_execution
from lolcats_core.training.finetune import next_token_loss
from lolcats_core.training.transfer import attention_state_names, transfer_mode, transfer_mse


def _saved_numels(fn):
    """fn()'s result and the sizes of the tensors autograd saved for its backward."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return fn(), sizes


def test_chunked_cross_entropy_equals_the_plain_loss_and_keeps_no_logits():
    torch.manual_seed(0)
    head = nn.Linear(16, 1000).requires_grad_(False)
    hidden = torch.randn(50, 16, requires_grad=True)
    target = torch.randint(0, 1000, (50,))
    plain = F.cross_entropy(head(hidden).float(), target)
    (0.3 * plain).backward()
    expected, hidden.grad = hidden.grad, None
    loss, saved = _saved_numels(lambda: chunked_loss.chunked_cross_entropy(hidden, head, target, rows=7))
    (0.3 * loss).backward()
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(hidden.grad, expected)
    assert max(saved) <= hidden.numel() < 50 * 1000  # the plain loss keeps (50, 1000) fp32 log-probabilities
    with torch.no_grad():
        torch.testing.assert_close(chunked_loss.chunked_cross_entropy(hidden, head, target, rows=7), plain)
    with pytest.raises(Exception, match="frozen nn.Linear output head"):
        chunked_loss.chunked_cross_entropy(hidden, head.requires_grad_(True), target)


def _lora_model(**config):
    torch.manual_seed(0)
    model = linearize(AutoModelForCausalLM.from_config(make_tiny_config(**config)),
                      LinearizeConfig(window=4, feature_dim=16))
    randomize_attention(model)
    model = add_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # LoRA B starts at zero; move it so that every adapter carries gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.train()


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 127, (2, 24), generator=g)
    labels = ids.clone()
    labels[0, :9] = labels[1, 5:12] = -100  # masked prompts
    return {"input_ids": ids, "labels": labels}


def _lora_grads(model, loss_fn) -> tuple[float, dict]:
    loss = loss_fn(model)
    (0.5 * loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def _plain_next_token_loss(model):
    batch = _batch()
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))


def test_next_token_loss_in_chunks_equals_the_whole_logits(monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 4 * 128 * 5)  # 5 rows per chunk at the tiny vocabulary
    model = _lora_model()
    loss, grads = _lora_grads(model, lambda m: next_token_loss(m, _batch(), "cpu")[0])
    plain, expected = _lora_grads(model, _plain_next_token_loss)
    assert loss == pytest.approx(plain, rel=1e-6)
    assert grads.keys() == expected.keys() and len(grads) == 16  # q, k, v, o x A, B x 2 layers
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name], msg=name)


def test_checkpointed_layers_give_the_same_gradients_and_keep_less():
    model = _lora_model()
    loss_fn = lambda m: next_token_loss(m, _batch(), "cpu")[0]  # noqa: E731
    (loss, grads), saved = _saved_numels(lambda: _lora_grads(model, loss_fn))
    with checkpointed_layers(model, True):
        (loss_ckpt, grads_ckpt), saved_ckpt = _saved_numels(lambda: _lora_grads(model, loss_fn))
    assert not any(getattr(layer, "gradient_checkpointing", False) for layer in base_model(model).model.layers)
    assert loss_ckpt == loss and sum(saved_ckpt) < sum(saved) / 2
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ConfigError, match="auto"):
        stage2_execution(model, TrainConfig(gradient_checkpointing="auto"))


def _transfer_grads(model, loss_fn=transfer_mse) -> dict:
    params = attention_state_names(model)
    model.train()
    with torch.no_grad(), transfer_mode(model, train=True, mse=loss_fn):
        base_model(model).model(input_ids=_batch()["input_ids"], use_cache=False)
    grads = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.slow  # dynamo traces each graph: 10-20 s on 2 cores
def test_compiled_layers_train_both_stages_as_eager(monkeypatch):
    """Traced with aot_eager (dynamo and autograd as on the GPU, no C++ build): the kernel call
    and the stage-1 hook run between the layers' graphs; gradients match the eager ones."""
    monkeypatch.setattr(execution, "BACKEND", "aot_eager")
    model = linearize(AutoModelForCausalLM.from_config(make_tiny_config()), LinearizeConfig(window=4, feature_dim=16))
    randomize_attention(model)
    eager = _transfer_grads(model)
    with compiled_layers(model, True):
        traced = _transfer_grads(model, execution.compiled(transfer_mse, True))
    for name in eager:
        torch.testing.assert_close(traced[name], eager[name], msg=name)

    model = _lora_model()
    loss_fn = lambda m: next_token_loss(m, _batch(), "cpu")[0]  # noqa: E731
    loss, grads = _lora_grads(model, loss_fn)
    with stage2_execution(model, TrainConfig(gradient_checkpointing=True, compile=True)):
        loss_c, grads_c = _lora_grads(model, loss_fn)
    assert all(layer._compiled_call_impl is None for layer in base_model(model).model.layers)
    assert loss_c == pytest.approx(loss, rel=1e-6)
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], msg=name)


@pytest.mark.parametrize("heads,input_heads", [(4, 4), (4, 2)])
def test_hedgehog_is_the_two_softmaxes_of_its_definition(heads, input_heads):
    torch.manual_seed(0)
    fm = Hedgehog(heads, 16, 8)
    with torch.no_grad():
        fm.weight.add_(torch.randn_like(fm.weight))
    x = torch.randn(2, input_heads, 10, 16, requires_grad=True)
    grad_out = torch.randn(2, heads, 10, 16)

    def definition(x):
        u = _project(x, fm.weight)
        return torch.cat([u.softmax(-1), (-u).softmax(-1)], dim=-1)

    out = {}
    for name, fn in (("definition", definition), ("map", fm)):
        y = fn(x)
        (y * grad_out).sum().backward()
        out[name] = (y, x.grad, fm.weight.grad)
        x.grad = fm.weight.grad = None
    for a, b in zip(out["map"], out["definition"]):
        torch.testing.assert_close(a, b)
