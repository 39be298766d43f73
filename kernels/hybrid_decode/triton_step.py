"""One decoding step of the hybrid attention for a batch, in one Triton kernel.

One program per (sequence, K/V head) owns everything that head touches, so the in-place
updates need no synchronisation: it loads the window of its K/V head, takes the value in slot
pos % w (the key leaving the window) and folds it with `kf_fold` into (S, z) of each feature
head of its group, puts the new key/value into that slot in registers, attends for every query
head of the group over window + state, and finally writes the slot back. `pos` is read from
device memory, so a step can be captured in a CUDA graph and replayed with a new position.
Same semantics as `naive.py`.
"""

import torch
import triton
import triton.language as tl

from ..hybrid_attention.triton_fwd import LOG_FLOOR, NEG
from .naive import SinkState


@triton.jit
def _decode_kernel(
    q, k, v, qf, kf_fold, gamma, win_k, win_v, win_valid, S, z, pos, valid, o,
    win_sink, sink_k, sink_v, sink_valid, seen_valid, sink_bias, log_gate, win_decay,
    scale, H, HKV, HK,
    W: tl.constexpr, D: tl.constexpr, F: tl.constexpr,
    BW: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, LINEAR: tl.constexpr,
    SINKS: tl.constexpr, BS: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
):
    pid = tl.program_id(0)
    if SINKS > 0:  # one program per sequence: the only writer of its row's sink state
        i_b, g_lo, g_hi = pid, 0, HKV
    else:
        i_b, g_lo = pid // HKV, pid % HKV
        g_hi = g_lo + 1
    RK, RQ = HK // HKV, H // HK
    o_d, o_f = tl.arange(0, BD), tl.arange(0, BF)
    m_d, m_f = o_d < D, o_f < F
    b_valid = tl.load(valid + i_b) != 0

    if W > 0:
        slot = tl.load(pos).to(tl.int32) % W
        o_w = tl.arange(0, BW)
        m_w = o_w < W
        at_slot = o_w == slot
        b_ok = tl.load(win_valid + i_b.to(tl.int64) * W + o_w, mask=m_w, other=0) != 0
        b_leaving_ok = tl.sum(tl.where(at_slot & b_ok, 1, 0), 0) > 0
        b_ok = tl.where(at_slot, b_valid, b_ok) & m_w

    if SINKS > 0:  # row state: a new sink, the sink leaving the window into the buffer
        b_seen = tl.load(seen_valid + i_b)
        new_sink = b_valid & (b_seen < SINKS)
        tl.store(seen_valid + i_b, b_seen + b_valid.to(b_seen.dtype))
        o_s = tl.arange(0, BS)
        m_s = o_s < SINKS
        b_sok = tl.load(sink_valid + i_b.to(tl.int64) * SINKS + o_s, mask=m_s, other=0) != 0
        idx = tl.sum(b_sok.to(tl.int32), 0)  # the next free sink slot
        if W > 0:
            b_ws = tl.load(win_sink + i_b.to(tl.int64) * W + o_w, mask=m_w, other=0) != 0
            leaving_sink = (tl.sum(tl.where(at_slot & b_ws, 1, 0), 0) > 0) & b_leaving_ok
            b_ws = tl.where(at_slot, new_sink, b_ws) & m_w
            tl.store(win_sink + i_b.to(tl.int64) * W + slot, new_sink.to(win_sink.dtype.element_ty))
        else:
            leaving_sink = new_sink
        to_sink = (o_s == idx) & leaving_sink & m_s
        b_sok = (b_sok | to_sink) & m_s
        tl.store(sink_valid + i_b.to(tl.int64) * SINKS + o_s, b_sok.to(sink_valid.dtype.element_ty), mask=m_s)

    for i_g in range(g_lo, g_hi):
        i_bg = i_b * HKV + i_g
        b_knew = tl.load(k + i_bg.to(tl.int64) * D + o_d, mask=m_d, other=0).to(tl.float32)
        b_vnew = tl.load(v + i_bg.to(tl.int64) * D + o_d, mask=m_d, other=0).to(tl.float32)
        if W > 0:
            p_w = i_bg.to(tl.int64) * W * D + o_w[:, None] * D + o_d[None, :]
            m_wd = m_w[:, None] & m_d[None, :]
            b_wk = tl.load(win_k + p_w, mask=m_wd, other=0).to(tl.float32)
            b_wv = tl.load(win_v + p_w, mask=m_wd, other=0).to(tl.float32)
            b_fold_k = tl.sum(tl.where(at_slot[:, None], b_wk, 0.0), 0)
            b_fold_v = tl.sum(tl.where(at_slot[:, None], b_wv, 0.0), 0)
            b_wk = tl.where(at_slot[:, None], b_knew[None, :], b_wk)
            b_wv = tl.where(at_slot[:, None], b_vnew[None, :], b_wv)
        else:
            b_fold_k, b_fold_v = b_knew, b_vnew
        if SINKS > 0:  # the group's sink buffer, with the key that joins it now
            p_sk = i_bg.to(tl.int64) * SINKS * D + o_s[:, None] * D + o_d[None, :]
            m_sd = m_s[:, None] & m_d[None, :]
            b_sk = tl.load(sink_k + p_sk, mask=m_sd, other=0).to(tl.float32)
            b_sv = tl.load(sink_v + p_sk, mask=m_sd, other=0).to(tl.float32)
            b_sk = tl.where(to_sink[:, None], b_fold_k[None, :], b_sk)
            b_sv = tl.where(to_sink[:, None], b_fold_v[None, :], b_sv)
            tl.store(sink_k + p_sk, b_sk.to(sink_k.dtype.element_ty), mask=to_sink[:, None] & m_d[None, :])
            tl.store(sink_v + p_sk, b_sv.to(sink_v.dtype.element_ty), mask=to_sink[:, None] & m_d[None, :])

        for rk in range(0, RK):
            i_hk = (i_b * HK + i_g * RK + rk).to(tl.int64)
            if LINEAR:
                p_s = i_hk * F * D + o_f[:, None] * D + o_d[None, :]
                m_st = m_f[:, None] & m_d[None, :]
                b_kf = tl.load(kf_fold + i_hk * F + o_f, mask=m_f, other=0).to(tl.float32)
                if SINKS > 0:  # a sink leaving the window goes to the buffer, not the state
                    b_kf = tl.where(leaving_sink, 0.0, b_kf)
                b_S = tl.load(S + p_s, mask=m_st, other=0)
                b_z = tl.load(z + i_hk * F + o_f, mask=m_f, other=0)
                if GATED:  # decay the state by the new token's gate; the leaving key by its window decay
                    b_lg = tl.load(log_gate + i_hk).to(tl.float32)
                    b_S = b_S * tl.exp(b_lg)
                    b_z = b_z * tl.exp(b_lg)
                    if W > 0:
                        b_wd = tl.load(win_decay + i_hk * W + o_w, mask=m_w, other=0) + b_lg
                        b_kf = b_kf * tl.exp(tl.sum(tl.where(at_slot, b_wd, 0.0), 0))
                        tl.store(win_decay + i_hk * W + o_w, tl.where(at_slot, 0.0, b_wd), mask=m_w)
                b_S += b_kf[:, None] * b_fold_v[None, :]
                b_z += b_kf
                tl.store(S + p_s, b_S, mask=m_st)
                tl.store(z + i_hk * F + o_f, b_z, mask=m_f)
            elif GATED:
                if W > 0:
                    tl.store(win_decay + i_hk * W + slot, 0.0)
            for rq in range(0, RQ):
                i_h = i_g * RK * RQ + rk * RQ + rq
                i_bh = (i_b * H + i_h).to(tl.int64)
                b_q = tl.load(q + i_bh * D + o_d, mask=m_d, other=0).to(tl.float32)
                b_gm = tl.load(gamma + i_h).to(tl.float32)
                b_bias = 0.0
                if HAS_BIAS:
                    b_bias = tl.load(sink_bias + i_h).to(tl.float32)
                # shift c = max(softmax max, log linear sum, LOG_FLOOR with linear mass) and the
                # null key, as the reference (hybrid_attention/naive.py)
                b_num = tl.zeros([BD], dtype=tl.float32)
                b_den = 0.0
                b_c = NEG
                if LINEAR:
                    b_qf = tl.load(qf + i_bh * F + o_f, mask=m_f, other=0).to(tl.float32)
                    b_lnum = tl.sum(b_qf[:, None] * b_S, 0)
                    b_lden = tl.sum(b_qf * b_z, 0)
                    b_c = tl.where(b_lden > 0, tl.maximum(tl.log(tl.where(b_lden > 0, b_lden, 1.0)), LOG_FLOOR),
                                   NEG)
                if W > 0:
                    b_s = tl.sum(b_wk * b_q[None, :], 1) * scale
                    if SINKS > 0:
                        if HAS_BIAS:
                            b_s += tl.where(b_ws, b_bias, 0.0)
                    b_s = tl.where(b_ok, b_s, float("-inf"))
                    b_c = tl.maximum(b_c, tl.max(b_s, 0))
                if SINKS > 0:
                    b_ss = tl.where(b_sok, tl.sum(b_sk * b_q[None, :], 1) * scale + b_bias, float("-inf"))
                    b_c = tl.maximum(b_c, tl.max(b_ss, 0))
                b_c = tl.where(b_c > NEG, b_c, 0.0)
                if W > 0:
                    b_a = b_gm * tl.exp(b_s - b_c)
                    b_num += tl.sum(b_a[:, None] * b_wv, 0)
                    b_den += tl.sum(b_a, 0)
                if SINKS > 0:
                    b_a = b_gm * tl.exp(b_ss - b_c)
                    b_num += tl.sum(b_a[:, None] * b_sv, 0)
                    b_den += tl.sum(b_a, 0)
                if LINEAR:  # with linear mass c >= LOG_FLOOR: e^-c <= e^20
                    b_e = tl.where(b_lden > 0, tl.exp(-tl.maximum(b_c, LOG_FLOOR)), 0.0)
                    b_num += b_e * b_lnum
                    b_den += b_e * (b_lden + tl.exp(b_lden * 0.0 + LOG_FLOOR))  # + the null key
                b_y = b_num / tl.where(b_den > 0, b_den, 1.0)
                tl.store(o + i_bh * D + o_d, b_y.to(o.dtype.element_ty), mask=m_d)

        if W > 0:
            p_slot = i_bg.to(tl.int64) * W * D + slot * D + o_d
            tl.store(win_k + p_slot, b_knew.to(win_k.dtype.element_ty), mask=m_d)
            tl.store(win_v + p_slot, b_vnew.to(win_v.dtype.element_ty), mask=m_d)
    if W > 0:
        tl.store(win_valid + i_b.to(tl.int64) * W + slot, b_valid.to(win_valid.dtype.element_ty))


def hybrid_decode_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qf: torch.Tensor,
    kf_fold: torch.Tensor,
    gamma: torch.Tensor,
    win_k: torch.Tensor,
    win_v: torch.Tensor,
    win_valid: torch.Tensor,
    S: torch.Tensor,
    z: torch.Tensor,
    pos: int | torch.Tensor,
    valid: torch.Tensor,
    linear: bool = True,
    scale: float | None = None,
    *,
    sink_state: SinkState | None = None,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
    win_decay: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decoding step for a batch; arguments, state layout and result as
    `hybrid_decode_step_naive`. The state tensors must be contiguous (they are updated in
    place); S, z and win_decay fp32; the sink buffer in the window's dtype; w, D, F <= 256
    (checked by `dispatch.hybrid_decode_step`).

    Args:
        pos: int, or an integer tensor with one element on the device (CUDA-graph friendly).
    Returns:
        (B, H, D) in q's dtype.
    """
    B, H, D = q.shape
    Hkv, Hk, F = k.shape[1], kf_fold.shape[1], qf.shape[-1]
    W = win_k.shape[2]
    scale = D**-0.5 if scale is None else scale
    if not torch.is_tensor(pos):
        pos = torch.tensor(pos, dtype=torch.int64).to(q.device, non_blocking=True)
    sinks = 0 if sink_state is None else sink_state.sinks
    if W == 0 and not linear and not sinks:  # no key at all: the reference gives zeros
        return torch.zeros_like(q)
    if log_gate is not None and W > 0 and win_decay is None:
        raise ValueError("a gated decode step with a window needs win_decay")
    q, k, v, qf, kf_fold = (x.contiguous() for x in (q, k, v, qf, kf_fold))
    o = torch.empty_like(q)
    BD, BF = triton.next_power_of_2(D), triton.next_power_of_2(F)
    BW = triton.next_power_of_2(max(W, 1))
    if sinks:
        win_sink, sink_k, sink_v, sink_valid, seen_valid = sink_state
        sink_args = (win_sink.view(torch.uint8), sink_k, sink_v, sink_valid.view(torch.uint8), seen_valid)
    else:
        sink_args = (q,) * 5
    gate_args = (q, q) if log_gate is None else (log_gate.contiguous(), q if win_decay is None else win_decay)
    # with sinks one program per sequence (it alone updates the row's sink state), else per K/V head
    grid = (B,) if sinks else (B * Hkv,)
    _decode_kernel[grid](
        q, k, v, qf, kf_fold, gamma, win_k, win_v, win_valid.view(torch.uint8), S, z, pos,
        valid.view(torch.uint8), o, *sink_args, sink_bias if sink_bias is not None else gamma, *gate_args,
        scale, H, Hkv, Hk,
        W=W, D=D, F=F, BW=BW, BD=BD, BF=BF, LINEAR=bool(linear),
        SINKS=sinks, BS=triton.next_power_of_2(max(sinks, 1)), HAS_BIAS=bool(sinks) and sink_bias is not None,
        GATED=log_gate is not None,
        num_warps=4 if BW * BD <= 8192 else 8,
    )
    return o
