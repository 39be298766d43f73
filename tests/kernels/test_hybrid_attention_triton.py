"""Triton hybrid attention (forward and backward) against the O(T^2) reference."""

import pytest
import torch

pytest.importorskip("triton")

from lolcats_kernels import hybrid_attention_naive  # noqa: E402
from lolcats_kernels.hybrid_attention.triton_bwd import BackwardLaunch  # noqa: E402
from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# Under the interpreter: small blocks so that short sequences span several of them.
CHUNK = None if CUDA else 16


def make_inputs(B, H, Hkv, Hk, T, D, F, dtype, valid=False):
    q = torch.randn(B, H, T, D, device=DEVICE, dtype=dtype)
    k = torch.randn(B, Hkv, T, D, device=DEVICE, dtype=dtype)
    v = torch.randn(B, Hkv, T, D, device=DEVICE, dtype=dtype)
    qf = torch.rand(B, H, T, F, device=DEVICE, dtype=dtype)
    kf = torch.rand(B, Hk, T, F, device=DEVICE, dtype=dtype)
    gamma = torch.rand(H, device=DEVICE) * 0.9 + 0.05
    key_valid = None
    if valid:  # left padding of varying length, plus one hole
        key_valid = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
        for b in range(B):
            key_valid[b, : (3 * b + 2) % T] = False
        key_valid[-1, T // 2] = False
    return (q, k, v, qf, kf, gamma), key_valid


def run_both(inputs, window, linear, key_valid, chunk=CHUNK, launch=None):
    """Outputs and gradients of the kernel (backward launched by `launch`) and of the fp32
    reference, for one cotangent."""
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    refs = [x.detach().double().float().clone().requires_grad_() for x in inputs]
    y = hybrid_attention_triton(*xs, window, linear, None, key_valid, chunk, backward_launch=launch)
    y_ref = hybrid_attention_naive(*refs, window, linear, None, key_valid)
    do = torch.randn_like(y_ref)
    (y.float() * do).sum().backward()
    (y_ref * do).sum().backward()
    grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in xs]
    return [y] + grads, [y_ref] + [r.grad for r in refs]


def rel_err(a, b, floor):
    """||a - b|| / max(||b||, floor)."""
    return ((a.float() - b).norm() / b.norm().clamp_min(floor)).item()


def check(outs, refs, tol):
    """Relative errors below tol. Gradients can vanish mathematically (dgamma when there are no
    linear keys, dq with one key): a floor of 1e-2 per element keeps rounding noise from
    counting; dgamma sums O(T) terms per query, so its floor scales with T (and with the tf32
    rounding of GPU fp32 dots; on the CPU, twice T: with no linear key dgamma is exactly 0 and
    both sides hold only rounding noise of terms up to gamma)."""
    T = outs[0].shape[2]
    names = ["y", "dq", "dk", "dv", "dqf", "dkf", "dgamma"]
    for name, a, b in zip(names, outs, refs):
        floor = 1e-2 * b.numel() ** 0.5 * (T * (10 if CUDA else 2) if name == "dgamma" else 1)
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b, floor) < tol, (name, rel_err(a, b, floor))


CASES = [  # B, H, Hkv, Hk, T, window, linear, key_valid
    (2, 2, 2, 2, 37, 5, True, False),  # plain MHA, T not a multiple of the block
    (1, 4, 2, 2, 50, 20, True, False),  # GQA 2, Hk = Hkv, window spans 2 blocks
    (1, 4, 2, 4, 50, 20, True, True),  # GQA 2, Hk = H, padding
    (1, 3, 1, 3, 41, 16, True, False),  # GQA 3, window = block
    (1, 6, 2, 2, 33, 1, True, True),  # GQA 3, window 1
    (2, 2, 1, 2, 45, 0, True, False),  # pure linear
    (1, 2, 2, 2, 30, 64, True, False),  # window > T
    (1, 4, 2, 4, 40, 9, False, True),  # sliding window only
    pytest.param(1, 2, 1, 1, 1, 3, True, False, marks=pytest.mark.skipif(  # one token
        CUDA, reason="illegal memory access on H100, see kernels/dispatch.py _MIN_KERNEL_LEN")),
    (1, 2, 1, 1, 40, 3, True, False),  # one feature head for two query heads
    (1, 8, 2, 4, 75, 20, True, True),  # Hkv < Hk < H: two feature heads per K/V head, two queries each
    (2, 8, 2, 2, 70, 10, True, True),  # four query heads per feature head, padding
    (1, 2, 1, 2, 40, 15, True, False),  # window = block - 1 on the CPU: one key per block turns linear in its own block
    (1, 2, 1, 2, 70, 31, True, False),  # the same for blocks of 32 (fp32 on the GPU)
]


@pytest.mark.parametrize("B,H,Hkv,Hk,T,window,linear,valid", CASES)
def test_matches_reference_fp32(B, H, Hkv, Hk, T, window, linear, valid):
    inputs, key_valid = make_inputs(B, H, Hkv, Hk, T, 16, 8, torch.float32, valid)
    outs, refs = run_both(inputs, window, linear, key_valid)
    check(outs, refs, 5e-3 if CUDA else 1e-4)  # GPU fp32 dots run in tf32


@pytest.mark.parametrize("D,F,Hk", [(24, 12, 4), (32, 32, 4), (24, 12, 2)])
def test_non_power_of_two_and_fp16(D, F, Hk):
    inputs, key_valid = make_inputs(2, 4, 2, Hk, 35, D, F, torch.float16, valid=True)
    outs, refs = run_both(inputs, 7, True, key_valid)
    check(outs, refs, 1e-2)


def test_padding_rows_are_zero():
    inputs, key_valid = make_inputs(2, 2, 1, 2, 20, 16, 8, torch.float32, valid=True)
    y = hybrid_attention_triton(*inputs, 4, True, None, key_valid, CHUNK)
    assert (y[1, :, :5] == 0).all()


@pytest.mark.skipif(not CUDA, reason="full sizes need a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,window,Hk,valid", [(1000, 64, 8, False), (777, 256, 2, True), (513, 0, 8, False)])
def test_full_size_gpu(dtype, T, window, Hk, valid):
    inputs, key_valid = make_inputs(2, 8, 2, Hk, T, 128, 128, dtype, valid)
    inputs = (*inputs[:3], inputs[3] / 16, inputs[4] / 16, inputs[5])  # features of hedgehog size
    outs, refs = run_both(inputs, window, True, key_valid)
    check(outs, refs, 2e-2)


@pytest.mark.skipif(not CUDA, reason="full sizes need a GPU")
def test_large_feature_size_gpu():
    inputs, key_valid = make_inputs(1, 4, 2, 4, 300, 64, 256, torch.bfloat16)
    outs, refs = run_both(inputs, 100, True, key_valid)
    check(outs, refs, 2e-2)


@pytest.mark.skipif(not CUDA, reason="65536 programs per block need a GPU")
def test_batch_times_heads_beyond_the_grid_y_limit_gpu():
    """B * H = 65664 programs per query block: more than CUDA's 65535 on grid axes 1 and 2
    (the 8B-shaped generation benchmark's prefill at batch 2048 x 32 heads hit this)."""
    inputs, key_valid = make_inputs(2052, 32, 8, 8, 20, 16, 16, torch.bfloat16)
    outs, refs = run_both(inputs, 8, True, key_valid)
    check(outs, refs, 2e-2)


def test_dq_launch_policy():
    """Small masked tiles keep the dq launch that passes every GPU test; model sizes get the
    faster one."""
    from lolcats_kernels.hybrid_attention.triton_bwd import dq_launch_for

    assert dq_launch_for(32, 16, 2) == (4, 2)
    assert dq_launch_for(128, 128, 2) == (4, 1)
    assert dq_launch_for(64, 32, 2) == (4, 2)
    assert dq_launch_for(128, 128, 4) == (4, 2)  # fp32 at model sizes: not tested on the GPU at (4, 1)


def test_backward_launch_reaches_the_kernels(monkeypatch):
    """`backward_launch` fields given to `hybrid_attention_triton` replace the defaults of the
    backward kernels; fields left None keep them."""
    from lolcats_kernels.hybrid_attention import triton_bwd, triton_function

    seen = []

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("dq_launch", "dkv_launch", "dkv_split")})
        return triton_bwd.attention_bwd(*args, **kwargs)

    monkeypatch.setattr(triton_function, "attention_bwd", spy)
    inputs, _ = make_inputs(1, 2, 1, 2, 40, 16, 8, torch.float32)
    for launch in (None, triton_bwd.BackwardLaunch(dq=(8, 2), dkv_split=2)):
        xs = [x.clone().requires_grad_() for x in inputs]
        hybrid_attention_triton(*xs, 8, True, None, None, 32, backward_launch=launch).sum().backward()
    assert seen == [dict(dq_launch=None, dkv_launch=None, dkv_split=None),
                    dict(dq_launch=(8, 2), dkv_launch=None, dkv_split=2)]


@pytest.mark.parametrize("B,H,Hkv,Hk,T,window,linear,valid", [
    (2, 2, 2, 2, 77, 5, True, False),  # keys in both tiles of a block, T off the block
    (1, 8, 2, 4, 150, 40, True, True),  # window past the first tile, Hkv < Hk < H, padding
    (1, 4, 2, 2, 100, 0, True, False),  # pure linear
    (1, 4, 2, 4, 90, 20, False, True),  # sliding window only
    (1, 2, 1, 2, 70, 31, True, False),  # one key of the first tile leaves the window in its own block
    (1, 2, 1, 2, 70, 15, True, False),  # the same for the second tile
])
def test_dkv_key_tiles_match_reference(B, H, Hkv, Hk, T, window, linear, valid):
    """The dk/dv kernel on tiles of half a block (dkv_split=2) gives the same gradients."""
    inputs, key_valid = make_inputs(B, H, Hkv, Hk, T, 16, 8, torch.float32, valid)
    outs, refs = run_both(inputs, window, linear, key_valid, chunk=32, launch=BackwardLaunch(dkv_split=2))
    check(outs, refs, 5e-3 if CUDA else 1e-4)


@pytest.mark.skipif(not CUDA, reason="blocks of 64 on the GPU; the CPU tests split blocks of 32")
@pytest.mark.parametrize("T,window", [(300, 64), (200, 63)])
def test_dkv_whole_blocks_match_reference_gpu(T, window):
    """The dk/dv kernel on whole 64-key blocks (dkv_split=1, 8 warps), not the default."""
    inputs, key_valid = make_inputs(1, 4, 2, 4, T, 64, 32, torch.bfloat16, True)
    outs, refs = run_both(inputs, window, True, key_valid, chunk=64, launch=BackwardLaunch(dkv_split=1))
    check(outs, refs, 2e-2)


def test_dkv_split_policy_and_check():
    """Blocks of 64 split into two key tiles, smaller ones stay whole; a split into tiles of
    fewer than 16 keys is refused when the attention is called, before any kernel runs."""
    from lolcats_kernels.hybrid_attention.triton_bwd import dkv_split_for

    assert dkv_split_for(64) == 2
    assert dkv_split_for(32) == 1
    assert dkv_split_for(64, 1) == 1
    with pytest.raises(ValueError, match="tiles of >= 16"):
        dkv_split_for(32, 4)
    inputs, _ = make_inputs(1, 2, 1, 2, 40, 16, 8, torch.float32)
    with pytest.raises(ValueError, match="dkv_split=4"):
        hybrid_attention_triton(*inputs, 8, True, None, None, 32, backward_launch=BackwardLaunch(dkv_split=4))


def test_dkv_launch_policy():
    """Key tiles of 32 and fewer get 4 warps, whole blocks of 64 keep 8."""
    from lolcats_kernels.hybrid_attention.triton_bwd import dkv_launch_for

    assert dkv_launch_for(32) == (4, 2)
    assert dkv_launch_for(16) == (4, 2)
    assert dkv_launch_for(64) == (8, 2)


@pytest.mark.parametrize("offset", [16.0, 30.0], ids=["scores-90", "scores-318"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_very_negative_scores(offset, dtype):
    """Every key scoring far below 0 (Qwen2.5's heads reach -250): the shift follows the scores,
    the window does not vanish and no gradient is NaN (the old shift max(0, .) failed both)."""
    inputs, key_valid = make_inputs(1, 4, 2, 4, 50, 16, 8, torch.float32, valid=True)
    q, k, v, qf, kf, gamma = inputs
    u = torch.full((16,), 0.25, device=DEVICE)
    inputs = [(q + offset * u).to(dtype), (0.1 * k - offset * u).to(dtype), v.to(dtype), qf.to(dtype),
              kf.to(dtype), gamma]
    outs, refs = run_both(inputs, 7, True, key_valid)
    if dtype == torch.float32:  # GPU fp32 dots run in tf32: scores near -90 carry errors ~0.04
        check(outs, refs, 5e-2 if CUDA else 1e-4)
    else:  # fp16 keys of magnitude 7.5 whose common part cancels in dq: only y is comparable
        assert all(torch.isfinite(x).all() for x in outs)
        assert rel_err(outs[0], refs[0], 1e-2 * refs[0].numel() ** 0.5) < 1e-2


def test_weightless_rows_meet_the_null_key():
    """Scores near -90 and a linear sum near e^-80 (features peaked on disjoint dimensions; not
    lower, where GPU tf32 dots flush fp32 denormals): the kernel agrees with the reference, whose
    null key keeps every gradient finite."""
    torch.manual_seed(0)
    (q, k, v, qf, kf, gamma), _ = make_inputs(1, 4, 2, 4, 50, 16, 8, torch.float32)
    u = torch.full((16,), 0.25, device=DEVICE)
    hot = lambda i: torch.nn.functional.one_hot(torch.tensor(i, device=DEVICE), 8).float()  # noqa: E731
    qf = torch.softmax(80.0 * hot(0) + 0.1 * torch.randn_like(qf), -1)
    kf = torch.softmax(80.0 * hot(1) + 0.1 * torch.randn_like(kf), -1)
    outs, refs = run_both([q + 16.0 * u, 0.1 * k - 16.0 * u, v, qf, kf, gamma], 7, True, None)
    assert all(torch.isfinite(r).all() for r in refs)
    check(outs, refs, 5e-2 if CUDA else 1e-4)


# --- attention sinks -------------------------------------------------------------------------

def sink_padding(B, T):
    """Left padding that puts the sinks across a block edge (row 0: 14 pads, a hole at 16 among
    the sinks), a row with fewer valid keys than sinks (row 1: the last 3), full rows after."""
    key_valid = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    key_valid[0, :14] = False
    key_valid[0, 16] = False
    if B > 1:
        key_valid[1, : T - 3] = False
    return key_valid


def run_sinks(inputs, window, linear, key_valid, sinks, bias, chunk=CHUNK, cu_seqlens=None, gate=False,
              launch=None):
    """Outputs and gradients (incl. d sink_bias, then d log_gate) of the kernel (backward
    launched by `launch`) and of the fp32 reference; `gate`: a random log-gate in [-0.3, 0] (or
    a float: its scale)."""
    B, H, T = inputs[0].shape[:3]
    Hk = inputs[4].shape[1]
    sink_bias = torch.randn(H, device=DEVICE) if bias else None
    log_gate = -float(0.3 if gate is True else gate) * torch.rand(B, Hk, T, device=DEVICE) if gate else None
    leaves = list(inputs) + [x for x in (sink_bias, log_gate) if x is not None]
    xs = [x.detach().clone().requires_grad_() for x in leaves]
    refs = [x.detach().float().clone().requires_grad_() for x in leaves]

    def extra(r, part=slice(None)):
        return dict(sinks=sinks, sink_bias=r[6] if bias else None,
                    log_gate=r[-1][:, :, part] if gate else None)

    y = hybrid_attention_triton(*xs[:6], window, linear, None, key_valid, chunk, cu_seqlens, **extra(xs),
                                backward_launch=launch)
    if cu_seqlens is None:
        y_ref = hybrid_attention_naive(*refs[:6], window, linear, None, key_valid, **extra(refs))
    else:
        parts = [slice(int(a), int(b)) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]) if b > a]
        y_ref = torch.cat([hybrid_attention_naive(*(x[:, :, p] for x in refs[:5]), refs[5], window, linear,
                                                  **extra(refs, p)) for p in parts], 2)
    do = torch.randn_like(y_ref)
    (y.float() * do).sum().backward()
    (y_ref * do).sum().backward()
    grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in xs]
    return [y] + grads, [y_ref] + [r.grad for r in refs]


def check_sinks(outs, refs, tol):
    """`check`, plus d sink_bias and d log_gate (sums over O(T) entries, floors like dgamma's)."""
    check(outs[:7], refs[:7], tol)
    T = outs[0].shape[2]
    for i, (a, b) in enumerate(zip(outs[7:], refs[7:])):
        floor = 1e-2 * b.numel() ** 0.5 * T * (10 if CUDA else 2)
        assert torch.isfinite(a).all()
        assert rel_err(a, b, floor) < tol, (f"extra {i}", rel_err(a, b, floor))


SINK_CASES = [  # B, H, Hkv, Hk, T, window, linear, padding, sinks, bias
    (2, 2, 2, 2, 50, 5, True, False, 4, True),  # sinks in the far state, MHA
    (1, 4, 2, 2, 50, 20, True, False, 1, True),  # one sink, GQA 2, window over 2 blocks
    (3, 4, 2, 4, 60, 7, True, True, 4, True),  # left padding: sinks across a block edge, a row with 3 valid keys
    (1, 6, 2, 2, 45, 16, True, False, 4, False),  # window = block, GQA 3, no bias
    (1, 2, 1, 2, 45, 15, True, False, 4, True),  # window = block - 1
    (1, 2, 1, 2, 45, 17, True, False, 4, True),  # window = block + 1
    (1, 8, 2, 4, 75, 30, True, True, 4, True),  # Hkv < Hk < H; sinks inside the window for early queries
    (2, 2, 1, 2, 45, 0, True, True, 4, True),  # pure linear + sinks
    (1, 4, 2, 4, 40, 9, False, True, 4, True),  # sliding window + sinks (the training-free row)
    (1, 2, 2, 2, 30, 64, True, False, 4, True),  # window > T: every sink is a window key
    (1, 4, 2, 2, 40, 6, True, False, 16, True),  # a whole tile of sinks
    (1, 4, 2, 2, 40, 6, True, True, 0, True),  # no sinks: the bias reaches no key
]


@pytest.mark.parametrize("B,H,Hkv,Hk,T,window,linear,padding,sinks,bias", SINK_CASES)
def test_sinks_match_reference_fp32(B, H, Hkv, Hk, T, window, linear, padding, sinks, bias):
    inputs, _ = make_inputs(B, H, Hkv, Hk, T, 16, 8, torch.float32)
    key_valid = sink_padding(B, T) if padding else None
    outs, refs = run_sinks(inputs, window, linear, key_valid, sinks, bias)
    check_sinks(outs, refs, 5e-3 if CUDA else 1e-4)


@pytest.mark.parametrize("window,sinks", [(7, 4), (16, 1)])
def test_sinks_match_reference_fp16(window, sinks):
    inputs, _ = make_inputs(3, 4, 2, 4, 50, 24, 12, torch.float16)
    outs, refs = run_sinks(inputs, window, True, sink_padding(3, 50), sinks, True)
    check_sinks(outs, refs, 1e-2)


def test_sinks_dkv_key_tiles():
    """Sinks with the dk/dv kernel on tiles of half a block: sink keys in both tiles."""
    inputs, _ = make_inputs(2, 4, 2, 4, 100, 16, 8, torch.float32)
    outs, refs = run_sinks(inputs, 20, True, sink_padding(2, 100), 4, True, chunk=32,
                           launch=BackwardLaunch(dkv_split=2))
    check_sinks(outs, refs, 5e-3 if CUDA else 1e-4)


@pytest.mark.parametrize("lengths,window,sinks", [([17, 1, 40, 23], 6, 4), ([50, 3, 0, 33], 20, 3),
                                                  ([9, 2, 30], 40, 4)])
def test_sinks_packed_match_per_sequence(lengths, window, sinks):
    """Each packed sequence has its own first tokens as sinks (a one-token and an empty one)."""
    T, H = sum(lengths), 4
    inputs, _ = make_inputs(1, H, 2, 4, T, 16, 8, torch.float32)
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    outs, refs = run_sinks(inputs, window, True, None, sinks, True, cu_seqlens=cu)
    check_sinks(outs, refs, 5e-3 if CUDA else 1e-4)


def test_sinks_change_the_output():
    """The sinks are in the test inputs' reach: with them the output differs from without."""
    inputs, _ = make_inputs(1, 2, 1, 2, 40, 16, 8, torch.float32)
    y0 = hybrid_attention_triton(*inputs, 5, True, None, None, CHUNK)
    y4 = hybrid_attention_triton(*inputs, 5, True, None, None, CHUNK, sinks=4)
    assert (y0 - y4)[:, :, 10:].abs().max() > 1e-2
    torch.testing.assert_close(y0[:, :, :5], y4[:, :, :5])  # the sinks are still window keys


def test_too_many_sinks_raise():
    inputs, _ = make_inputs(1, 2, 1, 2, 20, 16, 8, torch.float32)
    with pytest.raises(ValueError, match="sinks"):
        hybrid_attention_triton(*inputs, 5, sinks=17)


# --- gated linear state ----------------------------------------------------------------------

GATE_CASES = [  # B, H, Hkv, Hk, T, window, padding, sinks, bias
    (2, 2, 2, 2, 50, 5, False, 0, False),  # gate alone, MHA, states over several blocks
    (1, 4, 2, 2, 70, 20, False, 0, False),  # GQA 2, window over 2 blocks
    (1, 6, 2, 2, 45, 16, False, 0, False),  # window = block, four-way sums of dG per feature head
    (1, 2, 1, 2, 45, 15, False, 4, True),  # window = block - 1, sinks
    (1, 2, 1, 2, 45, 17, True, 4, True),  # window = block + 1, left padding
    (3, 8, 2, 4, 75, 30, True, 4, True),  # Hkv < Hk < H, padding, sinks
    (2, 2, 1, 2, 45, 0, True, 0, False),  # gated linear attention (no window)
    (1, 2, 2, 2, 30, 64, False, 0, False),  # window > T: the gate reaches nothing
]


@pytest.mark.parametrize("B,H,Hkv,Hk,T,window,padding,sinks,bias", GATE_CASES)
def test_gate_matches_reference_fp32(B, H, Hkv, Hk, T, window, padding, sinks, bias):
    inputs, _ = make_inputs(B, H, Hkv, Hk, T, 16, 8, torch.float32)
    key_valid = sink_padding(B, T) if padding else None
    outs, refs = run_sinks(inputs, window, True, key_valid, sinks, bias, gate=True)
    check_sinks(outs, refs, 5e-3 if CUDA else 1e-4)


def test_gate_without_linear_part_is_ignored():
    """Sliding window only: the gate reaches no key and its gradient is 0."""
    inputs, _ = make_inputs(1, 4, 2, 4, 40, 16, 8, torch.float32)
    outs, refs = run_sinks(inputs, 9, False, None, 4, True, gate=True)
    check_sinks(outs, refs, 5e-3 if CUDA else 1e-4)
    assert not outs[-1].any()


@pytest.mark.parametrize("scale", [0.3, 3.0], ids=["slow-decay", "fast-decay"])
def test_gate_matches_reference_fp16(scale):
    """fp16 features with decays down to exp(-3) per token (underflowing within a block)."""
    inputs, _ = make_inputs(3, 4, 2, 4, 60, 24, 12, torch.float16)
    outs, refs = run_sinks(inputs, 7, True, sink_padding(3, 60), 4, True, gate=scale)
    check_sinks(outs, refs, 1e-2)


def test_gate_dkv_key_tiles():
    """The gate with the dk/dv kernel on tiles of half a block (the second tile's keys start
    their cumulative log-gate mid-block)."""
    inputs, _ = make_inputs(2, 4, 2, 4, 100, 16, 8, torch.float32)
    outs, refs = run_sinks(inputs, 20, True, sink_padding(2, 100), 4, True, chunk=32, gate=True,
                           launch=BackwardLaunch(dkv_split=2))
    check_sinks(outs, refs, 5e-3 if CUDA else 1e-4)


@pytest.mark.parametrize("lengths,window,sinks", [([17, 1, 40, 23], 6, 4), ([50, 3, 0, 33], 20, 0)])
def test_gate_packed_match_per_sequence(lengths, window, sinks):
    """Each packed sequence decays from its own start (d log_gate by a reverse cumulative sum
    within each sequence)."""
    T, H = sum(lengths), 4
    inputs, _ = make_inputs(1, H, 2, 2, T, 16, 8, torch.float32)
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    outs, refs = run_sinks(inputs, window, True, None, sinks, True, cu_seqlens=cu, gate=True)
    check_sinks(outs, refs, 5e-3 if CUDA else 1e-4)


def test_gate_changes_the_output():
    inputs, _ = make_inputs(1, 2, 1, 2, 40, 16, 8, torch.float32)
    log_gate = -0.3 * torch.rand(1, 2, 40, device=DEVICE)
    y0 = hybrid_attention_triton(*inputs, 5, True, None, None, CHUNK)
    y1 = hybrid_attention_triton(*inputs, 5, True, None, None, CHUNK, log_gate=log_gate)
    assert (y0 - y1)[:, :, 10:].abs().max() > 1e-2
    torch.testing.assert_close(y0[:, :, :5], y1[:, :, :5])  # no linear key yet
