"""Dispatcher: device routing, the forced Triton path and one warning per fallback reason."""

import warnings

import pytest
import torch

import lolcats_kernels.dispatch as dispatch
from lolcats_kernels import hybrid_attention, hybrid_attention_naive, hybrid_decode_step


def inputs(dtype=torch.float32, D=16):
    B, H, Hkv, Hk, T, F = 1, 4, 2, 2, 20, 8
    return (torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, Hkv, T, D, dtype=dtype),
            torch.randn(B, Hkv, T, D, dtype=dtype), torch.rand(B, H, T, F, dtype=dtype),
            torch.rand(B, Hk, T, F, dtype=dtype), torch.rand(H))


def test_cpu_uses_reference_path(monkeypatch):
    monkeypatch.delenv("LOLCATS_FORCE_TRITON", raising=False)
    x = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = hybrid_attention(*x, 5)
    torch.testing.assert_close(y, hybrid_attention_naive(*x, 5), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors in Triton kernels need the interpreter")
def test_forced_triton_matches_reference(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    x = inputs()
    y = hybrid_attention(*x, 5)
    torch.testing.assert_close(y, hybrid_attention_naive(*x, 5), atol=1e-5, rtol=1e-5)


def test_unsupported_falls_back_with_one_warning(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    dispatch._warn_once.cache_clear()
    x = inputs(D=272)
    with pytest.warns(RuntimeWarning, match="above 256"):
        y = hybrid_attention(*x, 5)
    torch.testing.assert_close(y, hybrid_attention_naive(*x, 5), atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hybrid_attention(*x, 5)  # same reason: no second warning


def test_decode_fallback_on_strided_state(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    dispatch._warn_once.cache_clear()
    B, H, Hkv, w, D, F = 2, 2, 1, 4, 16, 8
    q, qf = torch.randn(B, H, D), torch.rand(B, H, F)
    k, v, kf = torch.randn(B, Hkv, D), torch.randn(B, Hkv, D), torch.rand(B, H, F)
    state = [torch.randn(B, Hkv, w, D), torch.randn(B, Hkv, w, D), torch.ones(B, w, dtype=torch.bool),
             torch.zeros(B, H, D, F).transpose(-1, -2), torch.zeros(B, H, F)]
    with pytest.warns(RuntimeWarning, match="contiguous"):
        hybrid_decode_step(q, k, v, qf, kf, torch.rand(H), *state, torch.tensor(3), torch.ones(B, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_tensors_use_kernels():
    x = [t.cuda() for t in inputs(torch.bfloat16)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = hybrid_attention(*x, 5)
    ref = hybrid_attention_naive(*(t.float() for t in x), 5)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-2


def _short_inputs():
    return [t[:, :, :3] for t in inputs()[:5]] + [inputs()[5]]


@pytest.mark.parametrize("make,window,reason", [
    (_short_inputs, 2, "shorter than"),                   # sequences too short for the kernels
    (lambda: inputs(D=160), 5, "shared memory"),          # fp32 wider than 128
], ids=["short-sequences", "wide-fp32"])
def test_inputs_the_kernels_skip_take_reference_path(monkeypatch, make, window, reason):
    pytest.importorskip("triton")
    monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    dispatch._warn_once.cache_clear()
    x = make()
    with pytest.warns(RuntimeWarning, match=reason):
        y = hybrid_attention(*x, window)
    torch.testing.assert_close(y, hybrid_attention_naive(*x, window), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors in Triton kernels need the interpreter")
def test_sinks_and_gates_take_the_kernels(monkeypatch):
    """Sinks (with their logits) and a gate run in the kernels, with no warning; more sinks than
    one tile take the PyTorch path with a warning."""
    pytest.importorskip("triton")
    monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    dispatch._warn_once.cache_clear()
    x = inputs()
    bias = torch.randn(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = hybrid_attention(*x, 5, sinks=4, sink_bias=bias)
    torch.testing.assert_close(y, hybrid_attention_naive(*x, 5, sinks=4, sink_bias=bias), atol=1e-5, rtol=1e-5)
    log_gate = -0.1 * torch.rand(1, 2, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = hybrid_attention(*x, 5, sinks=4, log_gate=log_gate)
    torch.testing.assert_close(y, hybrid_attention_naive(*x, 5, sinks=4, log_gate=log_gate), atol=1e-5, rtol=1e-5)
    with pytest.warns(RuntimeWarning, match="more than 16"):
        y = hybrid_attention(*x, 5, sinks=17)
    torch.testing.assert_close(y, hybrid_attention_naive(*x, 5, sinks=17), atol=1e-5, rtol=1e-5)
