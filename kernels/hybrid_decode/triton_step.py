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

from ..hybrid_attention.naive import MAX_SHIFT
from ..hybrid_attention.triton_fwd import NEG


@triton.jit
def _decode_kernel(
    q, k, v, qf, kf_fold, gamma, win_k, win_v, win_valid, S, z, pos, valid, o,
    scale, H, HKV, HK,
    W: tl.constexpr, D: tl.constexpr, F: tl.constexpr,
    BW: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, LINEAR: tl.constexpr,
):
    i_bg = tl.program_id(0)
    i_b, i_g = i_bg // HKV, i_bg % HKV
    RK, RQ = HK // HKV, H // HK
    o_d, o_f = tl.arange(0, BD), tl.arange(0, BF)
    m_d, m_f = o_d < D, o_f < F
    b_knew = tl.load(k + i_bg.to(tl.int64) * D + o_d, mask=m_d, other=0).to(tl.float32)
    b_vnew = tl.load(v + i_bg.to(tl.int64) * D + o_d, mask=m_d, other=0).to(tl.float32)

    if W > 0:
        slot = tl.load(pos).to(tl.int32) % W
        o_w = tl.arange(0, BW)
        m_w = o_w < W
        p_w = i_bg.to(tl.int64) * W * D + o_w[:, None] * D + o_d[None, :]
        m_wd = m_w[:, None] & m_d[None, :]
        b_wk = tl.load(win_k + p_w, mask=m_wd, other=0).to(tl.float32)
        b_wv = tl.load(win_v + p_w, mask=m_wd, other=0).to(tl.float32)
        b_ok = tl.load(win_valid + i_b.to(tl.int64) * W + o_w, mask=m_w, other=0) != 0
        at_slot = o_w == slot
        b_fold_v = tl.sum(tl.where(at_slot[:, None], b_wv, 0.0), 0)
        b_wk = tl.where(at_slot[:, None], b_knew[None, :], b_wk)
        b_wv = tl.where(at_slot[:, None], b_vnew[None, :], b_wv)
        b_valid = tl.load(valid + i_b) != 0
        b_ok = tl.where(at_slot, b_valid, b_ok) & m_w
    else:
        b_fold_v = b_vnew

    for rk in range(0, RK):
        i_hk = (i_b * HK + i_g * RK + rk).to(tl.int64)
        if LINEAR:
            p_s = i_hk * F * D + o_f[:, None] * D + o_d[None, :]
            m_s = m_f[:, None] & m_d[None, :]
            b_kf = tl.load(kf_fold + i_hk * F + o_f, mask=m_f, other=0).to(tl.float32)
            b_S = tl.load(S + p_s, mask=m_s, other=0) + b_kf[:, None] * b_fold_v[None, :]
            b_z = tl.load(z + i_hk * F + o_f, mask=m_f, other=0) + b_kf
            tl.store(S + p_s, b_S, mask=m_s)
            tl.store(z + i_hk * F + o_f, b_z, mask=m_f)
        for rq in range(0, RQ):
            i_h = i_g * RK * RQ + rk * RQ + rq
            i_bh = (i_b * H + i_h).to(tl.int64)
            b_q = tl.load(q + i_bh * D + o_d, mask=m_d, other=0).to(tl.float32)
            # shift c = max(window max, log linear sum), as the reference (hybrid_attention/naive.py)
            b_num = tl.zeros([BD], dtype=tl.float32)
            b_den = 0.0
            b_c = NEG
            if LINEAR:
                b_qf = tl.load(qf + i_bh * F + o_f, mask=m_f, other=0).to(tl.float32)
                b_lnum = tl.sum(b_qf[:, None] * b_S, 0)
                b_lden = tl.sum(b_qf * b_z, 0)
                b_c = tl.where(b_lden > 0, tl.log(tl.where(b_lden > 0, b_lden, 1.0)), NEG)
            if W > 0:
                b_s = tl.where(b_ok, tl.sum(b_wk * b_q[None, :], 1) * scale, float("-inf"))
                b_c = tl.maximum(b_c, tl.max(b_s, 0))
                b_c = tl.where(b_c > NEG, b_c, 0.0)
                b_a = tl.load(gamma + i_h).to(tl.float32) * tl.exp(b_s - b_c)
                b_num += tl.sum(b_a[:, None] * b_wv, 0)
                b_den += tl.sum(b_a, 0)
            b_c = tl.where(b_c > NEG, b_c, 0.0)
            if LINEAR:
                b_e = tl.exp(tl.minimum(-b_c, MAX_SHIFT))
                b_num += b_e * b_lnum
                b_den += b_e * b_lden
            b_y = b_num / tl.where(b_den > 0, b_den, 1.0)
            tl.store(o + i_bh * D + o_d, b_y.to(o.dtype.element_ty), mask=m_d)

    if W > 0:
        p_slot = i_bg.to(tl.int64) * W * D + slot * D + o_d
        tl.store(win_k + p_slot, b_knew.to(win_k.dtype.element_ty), mask=m_d)
        tl.store(win_v + p_slot, b_vnew.to(win_v.dtype.element_ty), mask=m_d)
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
) -> torch.Tensor:
    """One decoding step for a batch; arguments, state layout and result as
    `hybrid_decode_step_naive`. The state tensors must be contiguous (they are updated in
    place); S and z fp32; w, D, F <= 256 (checked by `dispatch.hybrid_decode_step`).

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
    if W == 0 and not linear:  # no key at all: the reference gives zeros
        return torch.zeros_like(q)
    q, k, v, qf, kf_fold = (x.contiguous() for x in (q, k, v, qf, kf_fold))
    o = torch.empty_like(q)
    BD, BF = triton.next_power_of_2(D), triton.next_power_of_2(F)
    BW = triton.next_power_of_2(max(W, 1))
    _decode_kernel[(B * Hkv,)](
        q, k, v, qf, kf_fold, gamma, win_k, win_v, win_valid.view(torch.uint8), S, z, pos,
        valid.view(torch.uint8), o, scale, H, Hkv, Hk,
        W=W, D=D, F=F, BW=BW, BD=BD, BF=BF, LINEAR=bool(linear),
        num_warps=4 if BW * BD <= 8192 else 8,
    )
    return o
