"""Packed variable-length sequences against the reference run on each sequence alone."""

import warnings

import pytest
import torch

import lolcats_kernels.dispatch as dispatch
from lolcats_kernels import hybrid_attention_naive, hybrid_attention_varlen

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# Under the interpreter: small blocks so that short sequences span several of them.
CHUNK = None if CUDA else 16


def make_inputs(lengths, H, Hkv, Hk, D, F, dtype):
    """Packed (1, heads, sum(lengths), dim) inputs, gamma (H,) fp32 and cu_seqlens (S + 1,) int32."""
    T = sum(lengths)
    shapes = [(H, D), (Hkv, D), (Hkv, D), (H, F), (Hk, F)]
    xs = [torch.randn(1, h, T, e, device=DEVICE).to(dtype) for h, e in shapes[:3]]
    xs += [torch.rand(1, h, T, e, device=DEVICE).to(dtype) for h, e in shapes[3:]]
    gamma = torch.rand(H, device=DEVICE) * 0.9 + 0.05
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    return xs + [gamma], cu


def grads_of(fn, inputs, do):
    """Output of fn(*xs) and the gradients of sum(y * do) for fresh leaves xs (0 if unused)."""
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    y = fn(*xs)
    (y.float() * do).sum().backward()
    zero = [torch.zeros_like(x, dtype=torch.float) for x in xs]
    return [y.float()] + [x.grad.float() if x.grad is not None else z for x, z in zip(xs, zero)]


def per_sequence_naive(cu, window, linear):
    """The fp32 reference run on each sequence alone, concatenated back along time."""
    def fn(q, k, v, qf, kf, gamma):
        parts = [slice(int(a), int(b)) for a, b in zip(cu[:-1], cu[1:]) if b > a]
        seqs = [[x[:, :, p] for x in (q, k, v, qf, kf)] for p in parts]
        return torch.cat([hybrid_attention_naive(*xs, gamma, window, linear) for xs in seqs], 2)
    return fn


def check(outs, refs, T, tol):
    """Relative errors below tol, with floors as in test_hybrid_attention_triton.check: dgamma
    is a sum of O(T) terms per query and exactly 0 without linear keys or softmax keys."""
    names = ["y", "dq", "dk", "dv", "dqf", "dkf", "dgamma"]
    for name, a, b in zip(names, outs, refs):
        floor = 1e-2 * b.numel() ** 0.5 * (T * (10 if CUDA else 1) if name == "dgamma" else 1)
        assert torch.isfinite(a).all(), name
        err = ((a - b).norm() / b.norm().clamp_min(floor)).item()
        assert err < tol, (name, err)


CASES = [  # lengths, H, Hkv, Hk, window, linear
    ([17, 1, 40, 23], 4, 2, 2, 6, True),  # GQA 2, a one-token sequence, lengths off the block
    ([16, 32, 5], 2, 2, 2, 0, True),  # pure linear, lengths on and off the block
    ([50, 3, 0, 33], 4, 2, 4, 20, True),  # window over 2 blocks and longer than some sequences, an empty one
    ([9, 1, 30], 8, 2, 4, 40, True),  # window longer than every sequence; Hkv < Hk < H
    ([20, 45], 6, 2, 2, 7, False),  # sliding window only, GQA 3
    ([1, 64, 1], 3, 1, 3, 16, True),  # window = block, one-token sequences at both ends
    ([40, 7, 52], 8, 2, 2, 10, True),  # four query heads per feature head
]


@pytest.mark.parametrize("lengths,H,Hkv,Hk,window,linear", CASES)
def test_native_matches_per_sequence_fp32(lengths, H, Hkv, Hk, window, linear):
    pytest.importorskip("triton")
    from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton

    inputs, cu = make_inputs(lengths, H, Hkv, Hk, 16, 8, torch.float32)
    do = torch.randn(1, H, sum(lengths), 16, device=DEVICE)
    outs = grads_of(lambda *x: hybrid_attention_triton(*x, window, linear, None, None, CHUNK, cu), inputs, do)
    refs = grads_of(per_sequence_naive(cu, window, linear), inputs, do)
    check(outs, refs, max(lengths), 5e-3 if CUDA else 1e-4)  # GPU fp32 dots run in tf32


@pytest.mark.parametrize("lengths,window", [([70, 1, 45, 16], 20), ([33, 64, 5], 40)])
def test_dkv_key_tiles_match_per_sequence(lengths, window):
    """Packed sequences with the dk/dv kernel on half-block key tiles (dkv_split=2)."""
    pytest.importorskip("triton")
    from lolcats_kernels.hybrid_attention.triton_bwd import BackwardLaunch
    from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton

    inputs, cu = make_inputs(lengths, 4, 2, 4, 16, 8, torch.float32)
    do = torch.randn(1, 4, sum(lengths), 16, device=DEVICE)
    launch = BackwardLaunch(dkv_split=2)
    outs = grads_of(lambda *x: hybrid_attention_triton(*x, window, True, None, None, 32, cu, backward_launch=launch),
                    inputs, do)
    refs = grads_of(per_sequence_naive(cu, window, True), inputs, do)
    check(outs, refs, max(lengths), 5e-3 if CUDA else 1e-4)


@pytest.mark.parametrize("lengths,window,Hk", [([30, 1, 19, 7], 5, 4), ([40, 2, 24], 33, 4), ([50, 3, 37], 5, 2)])
def test_native_matches_per_sequence_fp16(lengths, window, Hk):
    pytest.importorskip("triton")
    from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton

    inputs, cu = make_inputs(lengths, 4, 2, Hk, 24, 12, torch.float16)
    do = torch.randn(1, 4, sum(lengths), 24, device=DEVICE)
    outs = grads_of(lambda *x: hybrid_attention_triton(*x, window, True, None, None, CHUNK, cu), inputs, do)
    refs = grads_of(per_sequence_naive(cu, window, True), [x.float() for x in inputs], do)
    check(outs, refs, max(lengths), 1e-2)


@pytest.mark.parametrize("force_triton", [False, True])
def test_packed_matches_per_sequence(monkeypatch, force_triton):
    """The public entry point: padded PyTorch path on CPU, native kernels (default block) when forced."""
    if force_triton:
        pytest.importorskip("triton")
        monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    elif CUDA:
        pytest.skip("the PyTorch path is the CPU one")
    inputs, cu = make_inputs([17, 1, 40, 23], 4, 2, 4, 16, 8, torch.float32)
    do = torch.randn(1, 4, 81, 16, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        outs = grads_of(lambda *x: hybrid_attention_varlen(*x, 6, cu.long()), inputs, do)
    refs = grads_of(per_sequence_naive(cu, 6, True), inputs, do)
    check(outs, refs, 40, 5e-3 if CUDA else 1e-4)


def test_unsupported_falls_back_with_one_warning(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    dispatch._warn_once.cache_clear()
    inputs, cu = make_inputs([5, 12, 3], 2, 1, 2, 272, 8, torch.float32)
    with pytest.warns(RuntimeWarning, match="above 256"):
        y = hybrid_attention_varlen(*inputs, 4, cu)
    torch.testing.assert_close(y, per_sequence_naive(cu, 4, True)(*inputs), atol=1e-5, rtol=1e-5)


def test_offsets_not_ending_at_the_packed_length_raise():
    """The kernels do not bound-check cu_seqlens: wrong offsets must fail before a launch."""
    pytest.importorskip("triton")
    from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton

    inputs, cu = make_inputs([10, 20], 2, 1, 2, 16, 8, torch.float32)
    for bad in (cu[:-1], cu + 1, torch.tensor([0, 25, 20, 30], device=DEVICE)):
        with pytest.raises(ValueError, match="cu_seqlens"):
            hybrid_attention_triton(*inputs, 4, cu_seqlens=bad)


@pytest.mark.parametrize("force_triton", [False, True])
def test_packed_sequences_get_their_own_sinks_and_gate(monkeypatch, force_triton):
    """Each packed sequence has its own first tokens as sinks and its own decay from 0 (the
    PyTorch path on CPU; the kernels, with no fallback, when forced)."""
    if force_triton:
        pytest.importorskip("triton")
        monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    elif CUDA:
        pytest.skip("the PyTorch path is the CPU one")
    lengths, H, Hkv, Hk, window, sinks = [23, 9, 30], 4, 2, 4, 6, 3
    (q, k, v, qf, kf, gamma), cu = make_inputs(lengths, H, Hkv, Hk, 8, 8, torch.float32)
    log_gate = -0.2 * torch.rand(1, Hk, sum(lengths), device=DEVICE)
    bias = torch.randn(H, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        y = hybrid_attention_varlen(q, k, v, qf, kf, gamma, window, cu, sinks=sinks, sink_bias=bias,
                                    log_gate=log_gate)
    parts = [slice(int(a), int(b)) for a, b in zip(cu[:-1], cu[1:])]
    ref = torch.cat([hybrid_attention_naive(q[:, :, p], k[:, :, p], v[:, :, p], qf[:, :, p], kf[:, :, p], gamma,
                                            window, sinks=sinks, sink_bias=bias, log_gate=log_gate[:, :, p])
                     for p in parts], 2)
    tol = 5e-3 if CUDA else 1e-5  # GPU fp32 dots run in tf32
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
