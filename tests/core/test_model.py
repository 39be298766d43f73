"""Conversion of HF models, decoding through generate(), configuration errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, DynamicCache

from helpers import make_tiny_config, randomize_attention
from lolcats_core import ConfigError, LinearizeConfig, UnsupportedModelError, freeze_for_attention_transfer, linearize
from lolcats_core.attention import LolcatsAttention
from lolcats_core.convert import attention_parameters


def _model(model_type="llama", lin=None, seed=0, **cfg):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_tiny_config(model_type, **cfg)).eval()
    if lin is not None:
        linearize(model, lin)
        randomize_attention(model)
    return model


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_window_covering_the_sequence_reproduces_the_softmax_model(model_type):
    ids = torch.randint(1, 128, (2, 40))
    base = _model(model_type)
    ref = base(ids).logits
    lin = linearize(copy.deepcopy(base), LinearizeConfig(window=64))
    assert type(lin).__name__ == f"Lolcats{type(base).__name__}"
    assert isinstance(lin, type(base))
    torch.testing.assert_close(lin(ids).logits, ref, atol=1e-5, rtol=1e-5)


def test_softmax_layers_are_kept_and_freezing_selects_attention_parameters():
    model = _model(lin=LinearizeConfig(window=4, softmax_layers=[1]))
    kinds = [type(layer.self_attn).__name__ for layer in model.model.layers]
    assert kinds == ["LolcatsAttention", "LlamaAttention"]
    trainable = freeze_for_attention_transfer(model)
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable) == sum(p.numel() for p in attention_parameters(model))
    attn = model.model.layers[0].self_attn
    assert not attn.q_proj.weight.requires_grad and attn.window_gate.requires_grad


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("lin", [
    LinearizeConfig(window=8, softmax_layers=[1]),
    LinearizeConfig(window=8, feature_map="t2r", share_key_map=True),
    LinearizeConfig(attention="linear", feature_map="elu1"),
    LinearizeConfig(attention="window", window=6),
    LinearizeConfig(attention="window", window=6, sinks=0),
    LinearizeConfig(window=8, sinks=3, sink_logits=True, gate="scalar"),
    LinearizeConfig(window=8, gate="liger", share_key_map=True),
    LinearizeConfig(attention="linear", sinks=2, gate="liger"),
], ids=["hybrid", "t2r-shared", "linear", "window-sinks", "window", "sinks-logits-scalar", "liger-shared",
        "linear-sinks-liger"])
def test_step_by_step_decoding_equals_parallel_forward(model_type, lin):
    """Left padding, batch 2, past the window boundary; prefill then one token at a time."""
    model = _model(model_type, lin=lin)
    T, pad = 36, 5
    ids = torch.randint(1, 128, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :pad] = 0
    ids[1, :pad] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    full = model(ids, attention_mask=mask, position_ids=position_ids).logits
    cache = DynamicCache(config=model.config)
    prefill = 12
    out = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=position_ids[:, :prefill],
                 past_key_values=cache, use_cache=True).logits]
    for t in range(prefill, T):
        out.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=position_ids[:, t:t + 1],
                         past_key_values=cache, use_cache=True).logits)
    stepped = torch.cat(out, 1)
    torch.testing.assert_close(stepped[0], full[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stepped[1, pad:], full[1, pad:], atol=1e-4, rtol=1e-4)
    # the padded row equals the same sequence run alone without padding
    alone = model(ids[1:, pad:]).logits[0]
    torch.testing.assert_close(full[1, pad:], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("gate", ["liger", "scalar"])
def test_gates_in_a_bfloat16_model(gate):
    """The GPU recipes linearize a bf16 model: the new parameters (fp32) take its activations."""
    model = _model().to(torch.bfloat16)
    linearize(model, LinearizeConfig(window=4, sinks=2, sink_logits=True, gate=gate))
    logits = model(torch.randint(1, 128, (2, 24))).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("gate", ["liger", "scalar"])
def test_stage1_trains_sink_logits_and_gates(gate):
    """Attention transfer reaches the sink logits and the scalar gate's projection."""
    model = _model(lin=LinearizeConfig(window=4, sinks=2, sink_logits=True, gate=gate))
    params = freeze_for_attention_transfer(model)
    attn = model.model.layers[0].self_attn
    assert attn.sink_logit.requires_grad and (gate == "liger") == (attn.state_gate is None)
    losses = []
    for layer in model.model.layers:
        layer.self_attn.transfer_hook = lambda m, y, t: losses.append(F.mse_loss(y, t))
    model(torch.randint(1, 128, (2, 24)))
    sum(losses).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert attn.sink_logit.grad.abs().sum() > 0
    if gate == "scalar":
        assert attn.state_gate.weight.grad.abs().sum() > 0


def test_generate_greedy_and_sampling_with_left_padding():
    model = _model(lin=LinearizeConfig(window=4))
    prompt = torch.randint(1, 128, (1, 9))
    alone = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    batch = torch.cat([torch.randint(1, 128, (1, 12)), torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)])
    mask = (torch.arange(12)[None] >= torch.tensor([[0], [3]])).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1, 12:], alone[0, 9:])
    torch.manual_seed(0)
    s1 = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=0, pad_token_id=0)
    torch.manual_seed(0)
    s2 = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=0, pad_token_id=0)
    assert torch.equal(s1, s2) and s1.shape == (1, 17)


def test_decode_state_is_constant_in_context_length():
    model = _model(lin=LinearizeConfig(window=4))
    sizes = []
    for T in (16, 64):
        cache = DynamicCache(config=model.config)
        model(torch.randint(1, 128, (1, T)), past_key_values=cache, use_cache=True)
        sizes.append(sum(layer.nbytes() for layer in cache.layers))
    assert sizes[0] == sizes[1] > 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(window=0), "window must be a positive"),
    (dict(window=-3), "window must be a positive"),
    (dict(feature_map="fourier"), "unknown feature_map 'fourier'"),
    (dict(attention="sparse"), "unknown attention 'sparse'"),
    (dict(softmax_layers=1.5), r"softmax_layers as a fraction"),
    (dict(feature_dim=0), "feature_dim must be a positive"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LinearizeConfig(**kwargs)


def test_softmax_layer_out_of_range_and_unsupported_architecture():
    with pytest.raises(ConfigError, match=r"softmax_layers \[7\] out of range: the model has 2 layers"):
        linearize(_model(), LinearizeConfig(softmax_layers=[0, 7]))
    gpt2 = AutoModelForCausalLM.from_config(
        make_tiny_config("gpt2", n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' \(GPT2LMHeadModel\).*llama, mistral, qwen2"):
        linearize(gpt2, LinearizeConfig())


def test_hub_kernels_package_is_not_shadowed():
    """Our kernels import as `lolcats_kernels`; transformers must not see a `kernels` package."""
    from transformers.utils.import_utils import is_kernels_available

    import lolcats_kernels

    assert not is_kernels_available()
    assert hasattr(lolcats_kernels, "hybrid_attention")
    assert all(isinstance(a, LolcatsAttention) for a in [_model(lin=LinearizeConfig()).model.layers[0].self_attn])
