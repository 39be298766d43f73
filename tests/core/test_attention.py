"""The hybrid attention: chunked path vs the naive reference, softmax limit, decode step."""

import pytest
import torch
import torch.nn.functional as F

from lolcats_kernels import hybrid_attention_chunked, hybrid_attention_naive, hybrid_decode_step_naive

# (B, H, Hkv, Hk, T, D, F, window, linear)
SHAPES = [
    (2, 4, 2, 4, 100, 16, 8, 16, True),  # GQA 2, per-head key maps
    (1, 6, 2, 2, 130, 8, 12, 64, True),  # GQA 3, shared key maps, T not a chunk multiple
    (2, 3, 3, 3, 50, 8, 8, 0, True),  # pure linear
    (1, 2, 1, 2, 70, 8, 8, 5, False),  # pure sliding window
    (1, 2, 1, 1, 37, 8, 8, 128, True),  # window > T
    (1, 4, 4, 4, 65, 16, 16, 1, True),  # window 1
]


def _inputs(B, H, Hkv, Hk, T, D, Fd, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    pos = lambda *s: torch.rand(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return (mk(B, H, T, D), mk(B, Hkv, T, D), mk(B, Hkv, T, D), pos(B, H, T, Fd), pos(B, Hk, T, Fd),
            torch.rand(H, generator=g).to(dtype).requires_grad_())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}kv{}k{}T{}D{}F{}w{}lin{}".format(*s))
def test_chunked_matches_naive_outputs_and_grads(shape, dtype):
    *dims, window, linear = shape
    args = _inputs(*dims, dtype=dtype)
    valid = torch.ones(dims[0], dims[4], dtype=torch.bool)
    valid[0, :5] = False  # left padding in the first sequence
    y_ref = hybrid_attention_naive(*args, window, linear, key_valid=valid)
    grads_ref = torch.autograd.grad(y_ref.float().square().sum(), args, allow_unused=True)
    y = hybrid_attention_chunked(*args, window, linear, key_valid=valid, chunk_size=16)
    grads = torch.autograd.grad(y.float().square().sum(), args, allow_unused=True)
    # fp32: the CPU BLAS is not bitwise reproducible on this hardware (the first matmul of a
    # process has been measured 7.9e-5 away from later identical calls), so 1e-5 would flake.
    tol = dict(atol=3e-4, rtol=1e-3) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), y_ref.float(), **tol)
    for g, g_ref in zip(grads, grads_ref):
        if g is None or g_ref is None:  # features are unused without the linear term
            assert not linear and all(x is None or not x.any() for x in (g, g_ref))
            continue
        scale = g_ref.float().abs().max().clamp_min(1.0)
        torch.testing.assert_close(g.float() / scale, g_ref.float() / scale, **tol)


# (B, H, Hkv, Hk, T, D, F, window, linear, sinks, sink_bias, gate)
SINK_GATE_SHAPES = [
    (2, 4, 2, 4, 100, 16, 8, 16, True, 4, True, True),  # GQA, sinks with logits, gate
    (1, 6, 2, 2, 130, 8, 12, 64, True, 1, False, True),  # shared key maps, window = chunk
    (2, 3, 3, 3, 50, 8, 8, 0, True, 4, False, True),  # gated linear attention + sinks, no window
    (1, 2, 1, 2, 70, 8, 8, 5, False, 4, True, False),  # window + sinks (training-free row)
    (1, 2, 1, 1, 37, 8, 8, 128, True, 4, False, True),  # window > T
    (2, 4, 4, 4, 65, 16, 16, 15, True, 0, False, True),  # gate alone, window one short of a chunk
    (1, 4, 2, 4, 70, 8, 8, 17, True, 4, False, False),  # sinks alone, window one over a chunk
]


@pytest.mark.parametrize("shape", SINK_GATE_SHAPES,
                         ids=lambda s: "B{}H{}kv{}k{}T{}D{}F{}w{}lin{}s{}b{}g{}".format(*s))
def test_chunked_matches_naive_with_sinks_and_gate(shape):
    *dims, window, linear, sinks, bias, gate = shape
    B, H, Hkv, Hk, T = dims[:5]
    args = _inputs(*dims, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    extra = dict(sinks=sinks)
    extra["sink_bias"] = torch.randn(H, generator=g).requires_grad_() if bias else None
    extra["log_gate"] = (-0.3 * torch.rand(B, Hk, T, generator=g)).requires_grad_() if gate else None
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, :5] = False  # left padding: the sinks are the first valid keys
    leaves = [*args] + [x for x in (extra["sink_bias"], extra["log_gate"]) if x is not None]
    y_ref = hybrid_attention_naive(*args, window, linear, key_valid=valid, **extra)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), leaves, allow_unused=True)
    y = hybrid_attention_chunked(*args, window, linear, key_valid=valid, chunk_size=16, **extra)
    grads = torch.autograd.grad(y.square().sum(), leaves, allow_unused=True)
    torch.testing.assert_close(y, y_ref, atol=3e-4, rtol=1e-3)
    for gr, gr_ref in zip(grads, grads_ref):
        if gr is None or gr_ref is None:
            assert all(x is None or not x.any() for x in (gr, gr_ref))
            continue
        scale = gr_ref.abs().max().clamp_min(1.0)
        torch.testing.assert_close(gr / scale, gr_ref / scale, atol=3e-4, rtol=1e-3)


@pytest.mark.parametrize("T", [2, 3])
def test_chunked_matches_naive_with_fewer_keys_than_sinks(T):
    """A prompt shorter than the sink count (a served 2-token prompt with sinks=4)."""
    args = _inputs(1, 2, 1, 2, T, 8, 8, torch.float32)
    y_ref = hybrid_attention_naive(*args, 16, True, sinks=4)
    y = hybrid_attention_chunked(*args, 16, True, sinks=4, chunk_size=16)
    torch.testing.assert_close(y, y_ref, atol=3e-4, rtol=1e-3)


def test_sinks_are_exact_softmax_keys():
    """window + sinks without the linear term is softmax over the window and the first keys."""
    q, k, v, qf, kf, gamma = (t.detach() for t in _inputs(1, 2, 1, 2, 40, 8, 8, torch.float32))
    y = hybrid_attention_chunked(q, k, v, qf, kf, gamma, 6, linear=False, sinks=3, chunk_size=8)
    i, j = torch.arange(40)[:, None], torch.arange(40)[None, :]
    mask = (j <= i) & ((j > i - 6) | (j < 3))
    ref = F.scaled_dot_product_attention(q, k.expand(1, 2, 40, 8), v.expand(1, 2, 40, 8), attn_mask=mask)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("offset", [16.0, 30.0], ids=["scores-90", "scores-318"])
@pytest.mark.parametrize("impl", [hybrid_attention_naive, hybrid_attention_chunked])
def test_very_negative_scores_keep_the_window_and_finite_gradients(impl, offset):
    """Every key scoring far below 0 (Qwen2.5 has heads at -120 and -250) made the old shift
    max(0, max score) underflow the denominator: around -90 the division's backward gave NaN
    gradients, around -300 the window's output was 0. The shift now follows the scores."""
    q, k, v, qf, kf, gamma = _inputs(1, 2, 1, 2, 48, 8, 8, torch.float32)
    u = torch.full((8,), 8**-0.5)
    q2 = (q.detach() + offset * u).requires_grad_()
    k2 = (0.1 * k.detach() - offset * u).requires_grad_()
    assert (q2 @ k2.transpose(-1, -2)).max() * 8**-0.5 < -offset**2 / 4  # the regime under test
    y = impl(q2, k2, v, qf, kf, gamma, window=8)
    grads = torch.autograd.grad(y.square().sum(), (q2, k2, v, qf, kf, gamma))
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    window_only = impl(q2, k2, v, qf, kf, gamma, window=8, linear=False)
    torch.testing.assert_close(y[:, :, :8], window_only[:, :, :8])  # no linear keys yet: pure window


@pytest.mark.parametrize("impl", [hybrid_attention_naive, hybrid_attention_chunked])
def test_rows_without_linear_keys_are_softmax_at_any_score(impl):
    """Qwen2.5 has rows scoring below -300 on every key: with the window covering them (no
    linear key, hence no null key) they stay exact softmax attention."""
    q, k, v, qf, kf, gamma = (t.detach() for t in _inputs(1, 2, 1, 2, 40, 8, 8, torch.float32))
    u = torch.full((8,), 8**-0.5)
    q, k = q + 30.0 * u, 0.1 * k - 30.0 * u
    s = q @ k.transpose(-1, -2) * 8**-0.5
    causal = torch.ones(40, 40).tril().bool()
    assert s.masked_fill(~causal, float("-inf")).amax(-1).max() < -50  # every row far below 0
    y = impl(q, k, v, qf, kf, torch.ones(2), window=64)
    ref = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v
    torch.testing.assert_close(y, ref, atol=2e-4, rtol=1e-3)  # fp32 scores near -318: ~3e-5 rounding


def vanishing_mass_inputs(T=48, D=8, Fd=8, peak=95.0, offset=16.0):
    """Scores near -90 on every key and features peaked on disjoint dimensions, so that a row's
    linear sum is ~e^-95 (denormal in fp32): with no floor, 1 / sum overflows in the backward."""
    q, k, v, qf, kf, gamma = (t.detach() for t in _inputs(1, 2, 1, 2, T, D, Fd, torch.float32))
    u = torch.full((D,), D**-0.5)
    hot = lambda i: F.one_hot(torch.tensor(i), Fd).float()  # noqa: E731
    qf = torch.softmax(peak * hot(0) + 0.1 * torch.randn_like(qf), -1)
    kf = torch.softmax(peak * hot(1) + 0.1 * torch.randn_like(kf), -1)
    return [x.requires_grad_() for x in (q + offset * u, 0.1 * k - offset * u, v, qf, kf, gamma)]


@pytest.mark.parametrize("impl", [hybrid_attention_naive, hybrid_attention_chunked])
def test_weightless_rows_fade_through_the_null_key_with_finite_gradients(impl):
    """A row whose keys all weigh ~e^-90 meets the null key (weight e^-20, value 0): its output
    fades to 0, every gradient stays finite, and rows with weight stay as they were."""
    inputs = vanishing_mass_inputs()
    y = impl(*inputs, window=8)
    grads = torch.autograd.grad(y.square().sum(), inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    assert y[:, :, 8:].abs().max() < 1e-6  # linear rows: e^-90 of mass against the null key's e^-20
    q, k, v, qf, kf, gamma = (x.detach() for x in inputs)
    dense = impl(q, k / 100, v, qf, kf, gamma, window=8, linear=False)  # scores ~0: the null key is nothing
    ref = torch.softmax(torch.where(torch.ones(48, 48).tril().bool() & ~torch.ones(48, 48).tril(-8).bool(),
                                    q @ (k / 100).transpose(-1, -2) * 8**-0.5, float("-inf")), -1) @ v
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", [hybrid_attention_naive, hybrid_attention_chunked])
def test_window_covering_the_sequence_is_softmax_attention(impl):
    q, k, v, qf, kf, gamma = (t.detach() for t in _inputs(2, 4, 2, 4, 48, 16, 8, torch.float32))
    y = impl(q, k, v, qf, kf, gamma, window=48)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def _peak_op_memory(impl, T: int) -> int:
    """Largest CPU memory allocated by one kind of op during a forward at length T."""
    args = [t.detach() for t in _inputs(1, 2, 1, 2, T, 8, 8, torch.float32)]
    with torch.profiler.profile(profile_memory=True) as prof:
        impl(*args, window=16)
    return max(e.cpu_memory_usage for e in prof.key_averages())


def test_chunked_memory_is_linear_in_length():
    """Doubling T doubles the chunked path's allocations; the naive T x T path quadruples."""
    chunked = _peak_op_memory(hybrid_attention_chunked, 1024) / _peak_op_memory(hybrid_attention_chunked, 512)
    naive = _peak_op_memory(hybrid_attention_naive, 1024) / _peak_op_memory(hybrid_attention_naive, 512)
    assert chunked < 2.5 and naive > 3.5, (chunked, naive)


@pytest.mark.parametrize("window,linear,Hk,sinks,bias,gate", [
    (8, True, 4, 0, False, False), (8, True, 2, 0, False, False), (0, True, 4, 0, False, False),
    (5, False, 2, 0, False, False), (8, True, 4, 4, True, True), (8, True, 2, 1, False, True), (0, True, 4, 4, False, True),
    (5, False, 2, 4, True, False), (8, True, 4, 0, False, True), (8, True, 2, 3, False, False)])
def test_decode_steps_match_parallel(window, linear, Hk, sinks, bias, gate):
    """Step-by-step decoding, with and without sinks and a gate, equals the parallel form, left
    padding included (the sinks of a padded row are its first real tokens)."""
    from lolcats_kernels.hybrid_decode.naive import SinkState

    B, H, Hkv, T, D, Fd = 2, 4, 2, 30, 8, 6
    q, k, v, qf, kf, gamma = (t.detach() for t in _inputs(B, H, Hkv, Hk, T, D, Fd, torch.float32))
    g = torch.Generator().manual_seed(3)
    sink_bias = torch.randn(H, generator=g) if bias else None
    log_gate = -0.2 * torch.rand(B, Hk, T, generator=g) if gate else None
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :4] = False
    ref = hybrid_attention_naive(q, k, v, qf, kf, gamma, window, linear, key_valid=valid, sinks=sinks,
                                 sink_bias=sink_bias, log_gate=log_gate)
    w = window
    win_k = torch.zeros(B, Hkv, w, D)
    win_v, win_valid = torch.zeros_like(win_k), torch.zeros(B, w, dtype=torch.bool)
    S, z = torch.zeros(B, Hk, Fd, D), torch.zeros(B, Hk, Fd)
    sk = SinkState(torch.zeros(B, w, dtype=torch.bool), torch.zeros(B, Hkv, sinks, D), torch.zeros(B, Hkv, sinks, D),
                   torch.zeros(B, sinks, dtype=torch.bool), torch.zeros(B, dtype=torch.long)) if sinks else None
    win_decay = torch.zeros(B, Hk, w) if gate else None
    outs = []
    for t in range(T):
        if w:
            fold = kf[:, :, t - w] * (win_valid[:, t % w] if t >= w else torch.zeros(B, dtype=torch.bool))[:, None, None]
        else:
            fold = kf[:, :, t] * valid[:, t, None, None]
        outs.append(hybrid_decode_step_naive(
            q[:, :, t], k[:, :, t], v[:, :, t], qf[:, :, t], fold, gamma, win_k, win_v, win_valid, S, z, t,
            valid[:, t], linear, sink_state=sk, sink_bias=sink_bias,
            log_gate=None if log_gate is None else log_gate[:, :, t], win_decay=win_decay))
    y = torch.stack(outs, 2)
    torch.testing.assert_close(y[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[1, :, 4:], ref[1, :, 4:], atol=1e-5, rtol=1e-5)  # padding rows differ
