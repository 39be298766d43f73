"""Forward kernel of the chunked hybrid attention (Triton).

One program per (query block n of BT tokens, batch x query head). It starts from the
linear state of the far chunks (`triton_state.py`), then walks the key blocks
n - delta .. n that hold the window, splitting each score tile by absolute position into
window (i - w < j <= i), linear (j <= i - w) and masked. The shift c_i of the reference,
max(window max, log linear sum, LOG_FLOOR once there is linear mass), is kept as a running max
that starts at the far state's max(log linear sum, LOG_FLOOR) and takes each block's window max
and the log of its linear sum; the null key's weight joins the denominator with the row's first
linear mass. When the max grows, the accumulated numerator and denominator are rescaled, so at
the end both carry exactly exp(-c_i), and the largest term is 1 however negative the scores.

Packed sequences (`IS_VARLEN`, `triton_varlen.py`): a program's block lies in one sequence and
its positions, masks and states are those of that sequence alone.

Attention sinks (`SINKS` > 0, at most 16): the first SINKS valid keys of each row (or of each
packed sequence) stay in the softmax term for every query. Their positions come as one tile of
BS = 16 keys (`sink_positions`: computed here without padding, given by the host as a (B, BS)
int32 tensor with left padding, -1 for an empty slot); query i reads sink p through that
tile when p <= i - w (inside the window it is an ordinary window key), with the per-head logit
`sink_bias` added to its score in either place. Sinks never enter the linear part: they are
masked out of the near blocks' linear terms as of the states (`triton_state.py`).

Gate (`GATED`, with the linear part only): log_gate (B, Hk, T) fp32, log g_t <= 0. A linear
key j reaches query i with the decay exp(G_i - G_j), G the inclusive cumulative log-gate (of the
row, or of the packed sequence). No long cumulative sum is ever formed: each block's cumulative
log-gate starts afresh at the block's start (`gate_block`) and blocks are joined by their
totals, so G_i - G_j = Gloc_i + (totals of blocks m .. n-1) - Gloc_j for i in block n, j in
block m < n; the state of chunks <= c is kept decayed to the end of chunk c (`triton_state.py`),
and a query of block n reads it decayed by exp(Gloc_i + totals of blocks n - delta .. n-1).

Saved for backward, per row (fp32): c_i, 1 / den_i and the linear factor e_i = exp(-c_i) (0 for
a row without linear keys, as in the reference), which is all the backward needs to rebuild
every weight.
"""

import torch
import triton
import triton.language as tl

from .naive import LOG_FLOOR as _LOG_FLOOR
from .triton_varlen import VarlenChunks, seq_chunk

# Globals read inside kernels must be constexpr (compiled Triton refuses others; the interpreter
# does not check).
NEG = tl.constexpr(-1.0e30)  # the running shift before any term: exp(NEG - finite) = 0, exp(NEG - NEG) = 1
LOG_FLOOR = tl.constexpr(_LOG_FLOOR)  # naive.LOG_FLOOR: the null key's log-weight
SINK_TILE = 16  # sink keys per row the kernels take (one tile: tl.dot needs 16)


@triton.jit
def gate_block(lg, o, L):
    """Inclusive cumulative log-gate over the positions o (one block, from its start) and its total."""
    b = tl.load(lg + o, mask=o < L, other=0.0)
    return tl.cumsum(b, 0), tl.sum(b, 0)


@triton.jit
def gate_total(lg, start, end, L, BT: tl.constexpr):
    """Summed log-gate of the blocks start .. end - 1 (of BT positions)."""
    tot = 0.0
    for b in range(start, end):
        o = b * BT + tl.arange(0, BT)
        tot += tl.sum(tl.load(lg + o, mask=o < L, other=0.0), 0)
    return tot


@triton.jit
def sink_positions(sink_pos, i_b, L, SINKS: tl.constexpr, BS: tl.constexpr, HAS_VALID: tl.constexpr):
    """(BS,) int32 positions of the row's sink keys (local to a packed sequence), -1 for none:
    the first min(SINKS, L) positions, or, with key_valid, those the host wrote to sink_pos."""
    o_s = tl.arange(0, BS)
    if HAS_VALID:
        p = tl.load(sink_pos + i_b.to(tl.int64) * BS + o_s)
    else:
        p = tl.where(o_s < tl.minimum(L, SINKS), o_s, -1)
    return p


@triton.jit
def _fwd_kernel(
    q, k, v, qf, kf, gamma, valid, h, z, o, cs, inv_den, lin_e, chunk_indices, cu_seqlens,
    sink_pos, sink_bias, lg,
    scale, T, N, W, DELTA, H, HKV, HK,
    D: tl.constexpr, F: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
    LINEAR: tl.constexpr, HAS_VALID: tl.constexpr, IS_VARLEN: tl.constexpr,
    SINKS: tl.constexpr, BS: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
):
    i_bh, i_t = tl.program_id(0), tl.program_id(1)  # B*H on axis 0: axes 1-2 stop at 65535
    i_b, i_h = i_bh // H, i_bh % H
    i_hv = i_b * HKV + i_h // (H // HKV)
    i_hk = i_b * HK + i_h // (H // HK)
    q += i_bh.to(tl.int64) * T * D
    o += i_bh.to(tl.int64) * T * D
    qf += i_bh.to(tl.int64) * T * F
    k += i_hv.to(tl.int64) * T * D
    v += i_hv.to(tl.int64) * T * D
    kf += i_hk.to(tl.int64) * T * F
    lg += i_hk.to(tl.int64) * T
    cs += i_bh.to(tl.int64) * T
    inv_den += i_bh.to(tl.int64) * T
    lin_e += i_bh.to(tl.int64) * T
    if IS_VARLEN:  # block i_n of a sequence of L tokens from bos: positions below are local to it
        i_n, bos, L = seq_chunk(chunk_indices, cu_seqlens, i_t)
        q += bos * D
        o += bos * D
        qf += bos * F
        k += bos * D
        v += bos * D
        kf += bos * F
        lg += bos
        cs += bos
        inv_den += bos
        lin_e += bos
    else:
        i_n, L = i_t, T

    o_i = i_n * BT + tl.arange(0, BT)
    o_d, o_f = tl.arange(0, BD), tl.arange(0, BF)
    m_i, m_d, m_f = o_i < L, o_d < D, o_f < F
    b_q = tl.load(q + o_i[:, None] * D + o_d[None, :], mask=m_i[:, None] & m_d[None, :], other=0)
    b_g = tl.load(gamma + i_h).to(tl.float32)

    b_m = tl.full([BT], NEG, dtype=tl.float32)
    b_acc = tl.zeros([BT, BD], dtype=tl.float32)
    b_den = tl.zeros([BT], dtype=tl.float32)
    b_lin = tl.zeros([BT], dtype=tl.int32)  # the row has linear mass
    if LINEAR:  # the far state's terms and the null key, shifted by max(log of their sum, LOG_FLOOR)
        b_qf = tl.load(qf + o_i[:, None] * F + o_f[None, :], mask=m_i[:, None] & m_f[None, :], other=0)
        p_state = i_hk.to(tl.int64) * N + i_t
        b_h = tl.load(h + p_state * F * D + o_f[:, None] * D + o_d[None, :],
                      mask=m_f[:, None] & m_d[None, :], other=0)
        b_z = tl.load(z + p_state * F + o_f, mask=m_f, other=0)
        if GATED:  # the state is decayed to the end of block n - delta - 1: on to each query
            b_gq, _ = gate_block(lg, o_i, L)
            b_off = gate_total(lg, tl.maximum(i_n - DELTA, 0), i_n, L, BT)  # blocks n - delta .. n - 1
            b_qfs = (b_qf.to(tl.float32) * tl.exp(b_gq + b_off)[:, None]).to(b_qf.dtype)
        else:
            b_qfs = b_qf
        b_far = tl.sum(b_qfs.to(tl.float32) * b_z[None, :], 1)
        b_m = tl.where(b_far > 0, tl.maximum(tl.log(tl.where(b_far > 0, b_far, 1.0)), LOG_FLOOR), NEG)
        b_e0 = tl.exp(-tl.maximum(b_m, LOG_FLOOR))  # 0 terms where b_far = 0
        b_acc = tl.dot(b_qfs, b_h.to(b_qf.dtype)) * b_e0[:, None]
        b_den = tl.where(b_far > 0, b_far * b_e0 + tl.exp(-(tl.maximum(b_m, LOG_FLOOR) - LOG_FLOOR)), 0.0)
        b_lin = (b_far > 0).to(tl.int32)

    if SINKS > 0:  # the sink tile: sinks older than the window, softmax terms only
        p_s = sink_positions(sink_pos, i_b, L, SINKS, BS, HAS_VALID)
        s_last = tl.max(p_s, 0)  # keys up to here (valid ones) are sinks
        b_bias = 0.0
        if HAS_BIAS:
            b_bias = tl.load(sink_bias + i_h).to(tl.float32)
        m_s = p_s >= 0
        b_ks = tl.load(k + p_s[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0)
        b_vs = tl.load(v + p_s[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0)
        vis = (o_i[:, None] - p_s[None, :] >= W) & m_s[None, :]
        b_ss = tl.where(vis, tl.dot(b_q, tl.trans(b_ks)) * scale + b_bias, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_ss, 1))
        b_ws = b_g * tl.exp(b_ss - b_mn[:, None])  # not b_w: a loop-carried name keeps its shape
        b_alpha = tl.exp(b_m - b_mn)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_ws.to(b_vs.dtype), b_vs)
        b_den = b_den * b_alpha + tl.sum(b_ws, 1)
        b_m = b_mn

    for j in range(tl.maximum(i_n - DELTA, 0), i_n + 1):
        o_j = j * BT + tl.arange(0, BT)
        m_j = o_j < L
        if HAS_VALID:
            m_j &= tl.load(valid + i_b.to(tl.int64) * T + o_j, mask=m_j, other=0) != 0
        b_k = tl.load(k + o_j[:, None] * D + o_d[None, :], mask=m_j[:, None] & m_d[None, :], other=0)
        b_v = tl.load(v + o_j[:, None] * D + o_d[None, :], mask=m_j[:, None] & m_d[None, :], other=0)
        diff = o_i[:, None] - o_j[None, :]
        win = (diff >= 0) & (diff < W) & m_j[None, :]
        m_lin = m_j
        if SINKS > 0:
            snk = m_j & (o_j <= s_last)
            m_lin = m_j & ~snk
            if HAS_BIAS:
                b_s = tl.where(win, tl.dot(b_q, tl.trans(b_k)) * scale + tl.where(snk, b_bias, 0.0)[None, :],
                               float("-inf"))
            else:
                b_s = tl.where(win, tl.dot(b_q, tl.trans(b_k)) * scale, float("-inf"))
        else:
            b_s = tl.where(win, tl.dot(b_q, tl.trans(b_k)) * scale, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        b_null = tl.zeros([BT], dtype=tl.float32)
        if LINEAR:
            if (i_n - j) * BT + BT - 1 >= W:  # the block holds keys older than the window
                b_kf = tl.load(kf + o_j[:, None] * F + o_f[None, :], mask=m_lin[:, None] & m_f[None, :], other=0)
                lin = (diff >= W) & m_lin[None, :]
                if GATED:  # decay exp(Gloc_i + totals of blocks j .. n-1 - Gloc_j)
                    b_gk, _ = gate_block(lg, o_j, L)
                    b_dec = tl.exp(tl.minimum(b_gq[:, None] + b_off - b_gk[None, :], 0.0))
                    b_p = tl.where(lin, tl.dot(b_qf, tl.trans(b_kf)) * b_dec, 0.0)
                else:
                    b_p = tl.where(lin, tl.dot(b_qf, tl.trans(b_kf)), 0.0)
                b_psum = tl.sum(b_p, 1)
                b_first = (b_psum > 0) & (b_lin == 0)  # the row's first linear mass brings the null key
                b_lin = tl.maximum(b_lin, (b_psum > 0).to(tl.int32))
                b_mn = tl.maximum(b_mn, tl.where(b_psum > 0, tl.maximum(tl.log(tl.where(b_psum > 0, b_psum, 1.0)),
                                                                        LOG_FLOOR), NEG))
                b_w = b_g * tl.exp(b_s - b_mn[:, None]) + b_p * tl.exp(-tl.maximum(b_mn, LOG_FLOOR))[:, None]
                b_null = tl.where(b_first, tl.exp(-(tl.maximum(b_mn, LOG_FLOOR) - LOG_FLOOR)), 0.0)
            else:
                b_w = b_g * tl.exp(b_s - b_mn[:, None])
        else:
            b_w = b_g * tl.exp(b_s - b_mn[:, None])
        b_alpha = tl.exp(b_m - b_mn)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_w.to(b_v.dtype), b_v)
        b_den = b_den * b_alpha + tl.sum(b_w, 1) + b_null
        b_m = b_mn
        if GATED:
            if LINEAR:
                b_off -= tl.sum(tl.load(lg + o_j, mask=o_j < L, other=0.0), 0)  # now blocks j + 1 .. n - 1

    b_inv = tl.where(b_den > 0, 1.0 / tl.where(b_den > 0, b_den, 1.0), 0.0)
    tl.store(o + o_i[:, None] * D + o_d[None, :], (b_acc * b_inv[:, None]).to(o.dtype.element_ty),
             mask=m_i[:, None] & m_d[None, :])
    b_c = tl.where(b_m > NEG, b_m, 0.0)
    tl.store(cs + o_i, b_c, mask=m_i)
    tl.store(inv_den + o_i, b_inv, mask=m_i)
    tl.store(lin_e + o_i, tl.where(b_lin > 0, tl.exp(-b_c), 0.0), mask=m_i)


def attention_fwd(q, k, v, qf, kf, gamma, h, z, key_valid, window: int, linear: bool,
                  scale: float, delta: int, chunk: int, varlen: VarlenChunks | None = None,
                  num_warps: int = 4, num_stages: int = 1, sinks: int = 0,
                  sink_pos: torch.Tensor | None = None, sink_bias: torch.Tensor | None = None,
                  log_gate: torch.Tensor | None = None):
    """Launch the forward kernel.

    Args:
        q: (B, H, T, D), k, v: (B, Hkv, T, D), qf: (B, H, T, F), kf: (B, Hk, T, F), all
            contiguous; gamma: (H,) fp32; h: (B, Hk, N, F, D), z: (B, Hk, N, F) from
            `state_fwd` (any tensors when not linear); key_valid: (B, T) int8 or None.
        varlen: packed sequences (B = 1, key_valid None), or None.
        sinks: sink keys per row (<= SINK_TILE); sink_pos: (B, SINK_TILE) int32 positions of
            the row's sinks, -1 for none (needed with key_valid only); sink_bias: (H,) fp32 or
            None.
        log_gate: (B, Hk, T) fp32 contiguous, or None (no decay; used with the linear part only).
    Returns:
        o: (B, H, T, D) in q's dtype; cs, inv_den, lin_e: (B, H, T) fp32.
    """
    B, H, T, D = q.shape
    F = qf.shape[-1]
    N = triton.cdiv(T, chunk) if varlen is None else varlen.num_chunks
    o = torch.empty_like(q)
    cs = q.new_empty(B, H, T, dtype=torch.float32)
    inv_den, lin_e = torch.empty_like(cs), torch.empty_like(cs)
    seq_args = (q, q) if varlen is None else (varlen.chunk_indices, varlen.cu_seqlens)
    _fwd_kernel[(B * H, N)](
        q, k, v, qf, kf, gamma, key_valid if key_valid is not None else q, h, z, o, cs, inv_den, lin_e, *seq_args,
        sink_pos if sink_pos is not None else q, sink_bias if sink_bias is not None else gamma,
        log_gate if log_gate is not None else gamma,
        scale, T, N, window, delta, H, k.shape[1], kf.shape[1],
        D=D, F=F, BT=chunk, BD=max(16, triton.next_power_of_2(D)), BF=max(16, triton.next_power_of_2(F)),
        LINEAR=linear, HAS_VALID=key_valid is not None, IS_VARLEN=varlen is not None,
        SINKS=sinks, BS=SINK_TILE, HAS_BIAS=sink_bias is not None, GATED=log_gate is not None and linear,
        num_warps=num_warps, num_stages=num_stages,
    )
    return o, cs, inv_den, lin_e
