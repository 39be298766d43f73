"""Triton decode step against the reference step, over several steps with a wrapping window."""

import pytest
import torch

pytest.importorskip("triton")

from lolcats_kernels import hybrid_decode_step_naive  # noqa: E402
from lolcats_kernels.hybrid_decode.triton_step import hybrid_decode_step_triton  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def make_state(B, Hkv, Hk, w, D, F, dtype):
    return [
        torch.randn(B, Hkv, w, D, device=DEVICE, dtype=dtype),
        torch.randn(B, Hkv, w, D, device=DEVICE, dtype=dtype),
        torch.rand(B, w, device=DEVICE) > 0.3,
        torch.rand(B, Hk, F, D, device=DEVICE),
        torch.rand(B, Hk, F, device=DEVICE),
    ]


@pytest.mark.parametrize(
    "H,Hkv,Hk,w,D,F,linear,dtype",
    [
        (4, 2, 4, 5, 16, 8, True, torch.float32),
        (6, 2, 2, 3, 16, 8, True, torch.float32),
        (3, 3, 3, 0, 16, 8, True, torch.float32),
        (4, 2, 4, 1, 24, 12, True, torch.float16),
        (4, 1, 4, 6, 16, 8, False, torch.float32),
    ],
)
def test_steps_match_reference(H, Hkv, Hk, w, D, F, linear, dtype):
    B, steps = 3, 8
    state = make_state(B, Hkv, Hk, w, D, F, dtype)
    state_ref = [x.clone() for x in state]
    gamma = torch.rand(H, device=DEVICE)
    for pos in range(steps):
        q = torch.randn(B, H, D, device=DEVICE, dtype=dtype)
        k, v = (torch.randn(B, Hkv, D, device=DEVICE, dtype=dtype) for _ in range(2))
        qf = torch.rand(B, H, F, device=DEVICE, dtype=dtype)
        kf = torch.rand(B, Hk, F, device=DEVICE, dtype=dtype)
        valid = torch.rand(B, device=DEVICE) > 0.2
        p = torch.tensor(pos, device=DEVICE) if pos % 2 else pos
        y = hybrid_decode_step_triton(q, k, v, qf, kf, gamma, *state, p, valid, linear)
        y_ref = hybrid_decode_step_naive(q, k, v, qf, kf, gamma, *state_ref, pos, valid, linear)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(y.float(), y_ref.float(), atol=tol, rtol=tol)
        for a, b in zip(state, state_ref):
            torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_cuda_graph_replay():
    B, H, Hkv, Hk, w, D, F = 4, 8, 2, 8, 64, 128, 128
    state = make_state(B, Hkv, Hk, w, D, F, torch.bfloat16)
    state_ref = [x.clone() for x in state]
    gamma = torch.rand(H, device=DEVICE)
    args = [torch.randn(B, H, D, device=DEVICE, dtype=torch.bfloat16),
            torch.randn(B, Hkv, D, device=DEVICE, dtype=torch.bfloat16),
            torch.randn(B, Hkv, D, device=DEVICE, dtype=torch.bfloat16),
            torch.rand(B, H, F, device=DEVICE, dtype=torch.bfloat16),
            torch.rand(B, Hk, F, device=DEVICE, dtype=torch.bfloat16)]
    pos = torch.zeros((), dtype=torch.int64, device=DEVICE)
    valid = torch.ones(B, dtype=torch.bool, device=DEVICE)
    snapshot = [x.clone() for x in state]
    hybrid_decode_step_triton(*args, gamma, *state, pos, valid)  # compile outside the capture
    for a, b in zip(state, snapshot):
        a.copy_(b)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = hybrid_decode_step_triton(*args, gamma, *state, pos, valid)
    for step in range(3):
        pos.fill_(70 + step)
        graph.replay()
        y_ref = hybrid_decode_step_naive(*args, gamma, *state_ref, 70 + step, valid)
        torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)


def test_very_negative_scores_match_reference():
    """Window scores far below 0 and a small linear state: the shift is the larger of the window
    max and the log of the linear sum, as in the reference."""
    B, H, Hkv, Hk, w, D, F = 2, 4, 2, 4, 5, 16, 8
    state = make_state(B, Hkv, Hk, w, D, F, torch.float32)
    u = torch.full((D,), 0.25, device=DEVICE)
    state[0] = 0.1 * state[0] - 30 * u
    state[3], state[4] = state[3] * 1e-3, state[4] * 1e-3
    state_ref = [x.clone() for x in state]
    gamma = torch.rand(H, device=DEVICE)
    q = torch.randn(B, H, D, device=DEVICE) + 30 * u
    k, v = torch.randn(B, Hkv, D, device=DEVICE) * 0.1 - 30 * u, torch.randn(B, Hkv, D, device=DEVICE)
    qf, kf = torch.rand(B, H, F, device=DEVICE), torch.rand(B, Hk, F, device=DEVICE)
    valid = torch.ones(B, dtype=torch.bool, device=DEVICE)
    y = hybrid_decode_step_triton(q, k, v, qf, kf, gamma, *state, 7, valid, True)
    y_ref = hybrid_decode_step_naive(q, k, v, qf, kf, gamma, *state_ref, 7, valid, True)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def make_sink_state(B, Hkv, w, sinks, D, dtype):
    from lolcats_kernels.hybrid_decode.naive import SinkState

    return SinkState(torch.zeros(B, w, dtype=torch.bool, device=DEVICE),
                     torch.zeros(B, Hkv, sinks, D, device=DEVICE, dtype=dtype),
                     torch.zeros(B, Hkv, sinks, D, device=DEVICE, dtype=dtype),
                     torch.zeros(B, sinks, dtype=torch.bool, device=DEVICE),
                     torch.zeros(B, dtype=torch.long, device=DEVICE))


@pytest.mark.parametrize(
    "H,Hkv,Hk,w,D,F,linear,sinks,bias,gate,dtype",
    [
        (4, 2, 4, 3, 16, 8, True, 4, True, False, torch.float32),  # sinks leave a short window
        (6, 2, 2, 5, 16, 8, True, 2, False, False, torch.float32),  # GQA 3, shared feature heads
        (4, 2, 4, 0, 16, 8, True, 3, True, False, torch.float32),  # no window: sinks go straight to the buffer
        (4, 1, 4, 4, 16, 8, False, 4, True, False, torch.float32),  # window + sinks, no state
        (4, 2, 4, 3, 16, 8, True, 0, False, True, torch.float32),  # gate alone
        (4, 2, 2, 4, 16, 8, True, 4, True, True, torch.float32),  # sinks and gate
        (4, 2, 4, 0, 16, 8, True, 0, False, True, torch.float32),  # gated linear attention
        (4, 2, 4, 3, 24, 12, True, 4, True, True, torch.float16),
    ],
)
def test_sinks_and_gate_steps_match_reference(H, Hkv, Hk, w, D, F, linear, sinks, bias, gate, dtype):
    """From an empty state, over more steps than the window and the sinks, with left padding
    (rows start at different steps) and a padding hole: the sink buffer fills as sinks leave
    the window, and the gate decays the state and the window keys on their way in."""
    B, steps = 3, 12
    state = make_state(B, Hkv, Hk, w, D, F, dtype)
    state[2].zero_()
    state[3].zero_()
    state[4].zero_()
    state_ref = [x.clone() for x in state]
    extras, extras_ref = {}, {}
    if sinks:
        sk = make_sink_state(B, Hkv, w, sinks, D, dtype)
        extras["sink_state"], extras_ref["sink_state"] = sk, type(sk)(*(x.clone() for x in sk))
        if bias:
            extras["sink_bias"] = extras_ref["sink_bias"] = torch.randn(H, device=DEVICE)
    if gate:
        extras["win_decay"] = torch.zeros(B, Hk, w, device=DEVICE)
        extras_ref["win_decay"] = extras["win_decay"].clone()
    gamma = torch.rand(H, device=DEVICE)
    start = torch.tensor([0, 2, 5], device=DEVICE)  # left padding
    for pos in range(steps):
        q = torch.randn(B, H, D, device=DEVICE, dtype=dtype)
        k, v = (torch.randn(B, Hkv, D, device=DEVICE, dtype=dtype) for _ in range(2))
        qf = torch.rand(B, H, F, device=DEVICE, dtype=dtype)
        kf = torch.rand(B, Hk, F, device=DEVICE, dtype=dtype)
        valid = start <= pos
        if pos == 7:
            valid[0] = False  # a hole
        lg = -0.3 * torch.rand(B, Hk, device=DEVICE) if gate else None
        p = torch.tensor(pos, device=DEVICE) if pos % 2 else pos
        y = hybrid_decode_step_triton(q, k, v, qf, kf, gamma, *state, p, valid, linear, log_gate=lg, **extras)
        y_ref = hybrid_decode_step_naive(q, k, v, qf, kf, gamma, *state_ref, pos, valid, linear, log_gate=lg,
                                         **extras_ref)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(y.float(), y_ref.float(), atol=tol, rtol=tol)
        pairs = list(zip(state, state_ref))
        if sinks:
            pairs += list(zip(extras["sink_state"], extras_ref["sink_state"]))
        if gate:
            pairs.append((extras["win_decay"], extras_ref["win_decay"]))
        for a, b in pairs:
            torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)
    if sinks and w:
        assert extras["sink_state"].sink_valid[0].sum() == min(sinks, steps - w)  # sinks did reach the buffer
