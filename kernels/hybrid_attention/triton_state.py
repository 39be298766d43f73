"""Linear-attention states of the chunked hybrid attention (Triton).

Queries are cut into blocks of BT tokens. Query block n reads every key of chunks
c < n - delta through a state, where delta = ceil((w - 1) / BT) is the number of earlier
chunks the sliding window can reach (0 when w <= 1); chunks n - delta .. n are handled
explicitly by the attention kernels. Every key of a state chunk is older than the window for
every query of block n, so it is a pure linear-attention key.

Forward:  h[n] = sum_{j in chunks < n - delta} kf_j v_j^T   (F x D),  z[n] = sum kf_j  (F)
Backward: dh[c] = sum_{i in blocks > c + delta} qf_i g_i^T  (F x D), dz[c] = sum r_i qf_i (F)
with g_i = u_i do_i, r_i = u_i (do_i . y_i), u_i = e_i / den_i (e_i the linear factor of the
forward, exp(-c_i) or 0 for a row without linear keys); the reverse state
carries the gradient of every far query back to key chunk c. With grouped key maps (Hk < H),
the sums also run over the H / Hk query heads of a key head: the kernel runs one program per
query head and `state_bwd` adds up the heads of each group.

Attention sinks (`SINKS` > 0) never enter the forward states: the state kernel masks them out
like padding keys (`triton_fwd.sink_positions`).

Gate (`GATED`): the states are kept decayed to the end of their last chunk c,
H_c = exp(Gtot_c) H_{c-1} + sum_{j in c} exp(Gtot_c - Gloc_j) kf_j v_j^T (Gloc the cumulative
log-gate inside a chunk, Gtot its total), so every exponent is <= 0. In reverse, the query block
n = c + delta + 1 joins with exp(Gloc_i + totals of chunks c+1 .. c+delta) and the state decays
by exp(Gtot_{c+1}) per step; the dk/dv kernel takes each key on from its chunk's end.

Packed sequences (`IS_VARLEN`): one program per (sequence, head) runs these recurrences over
the blocks of its sequence alone, so both states start from zero at each sequence.
"""

import torch
import triton
import triton.language as tl

from .triton_fwd import SINK_TILE, gate_block, gate_total, sink_positions
from .triton_varlen import VarlenChunks, seq_bounds


@triton.jit
def _state_fwd_kernel(
    kf, v, valid, cu_seqlens, chunk_offsets, h, z, sink_pos, lg, T, N, DELTA, HK, RK,
    F: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_VALID: tl.constexpr, IS_VARLEN: tl.constexpr, SINKS: tl.constexpr, BS: tl.constexpr,
    GATED: tl.constexpr,
):
    i_bh, i_k, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # B*H on axis 0 (axes 1-2 stop at 65535)
    i_b, i_hk = i_bh // HK, i_bh % HK
    HKV = HK // RK
    if IS_VARLEN:  # i_b is a sequence of the packed row (batch 1): its rows and its states
        bos, L = seq_bounds(cu_seqlens, i_b)
        NL = tl.cdiv(L, BT)
        kf += i_hk.to(tl.int64) * T * F + bos * F
        lg += i_hk.to(tl.int64) * T + bos
        v += (i_hk // RK).to(tl.int64) * T * D + bos * D
        p_n = i_hk.to(tl.int64) * N + tl.load(chunk_offsets + i_b)
        h += p_n * F * D
        z += p_n * F
    else:
        L, NL = T, N
        kf += (i_b * HK + i_hk).to(tl.int64) * T * F
        lg += (i_b * HK + i_hk).to(tl.int64) * T
        v += (i_b * HKV + i_hk // RK).to(tl.int64) * T * D
        h += i_bh.to(tl.int64) * N * F * D
        z += i_bh.to(tl.int64) * N * F
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < F, o_v < D
    p_h = o_k[:, None] * D + o_v[None, :]
    m_h = m_k[:, None] & m_v[None, :]

    s_last = -1  # keys up to here (valid ones) are sinks
    if SINKS > 0:
        s_last = tl.max(sink_positions(sink_pos, i_b, L, SINKS, BS, HAS_VALID), 0)

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    b_z = tl.zeros([BK], dtype=tl.float32)
    for n in range(0, tl.minimum(DELTA + 1, NL)):
        tl.store(h + n * F * D + p_h, b_h.to(h.dtype.element_ty), mask=m_h)
        if i_v == 0:
            tl.store(z + n * F + o_k, b_z, mask=m_k)
    for n in range(DELTA + 1, NL):
        o_t = (n - DELTA - 1) * BT + tl.arange(0, BT)
        m_t = o_t < L
        if HAS_VALID:
            m_t &= tl.load(valid + i_b.to(tl.int64) * T + o_t, mask=m_t, other=0) != 0
        if SINKS > 0:
            m_t &= o_t > s_last
        b_kf = tl.load(kf + o_t[:, None] * F + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_v = tl.load(v + o_t[:, None] * D + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        if GATED:  # decay the state over this chunk, each key to the chunk's end
            b_gl, b_tot = gate_block(lg, o_t, L)
            b_kf = (b_kf.to(tl.float32) * tl.exp(b_tot - b_gl)[:, None]).to(b_kf.dtype)
            b_h *= tl.exp(b_tot)
            b_z *= tl.exp(b_tot)
        b_h += tl.dot(tl.trans(b_kf), b_v.to(b_kf.dtype))
        b_z += tl.sum(b_kf.to(tl.float32), 0)
        tl.store(h + n * F * D + p_h, b_h.to(h.dtype.element_ty), mask=m_h)
        if i_v == 0:
            tl.store(z + n * F + o_k, b_z, mask=m_k)


@triton.jit
def _state_bwd_kernel(
    qf, do, lin_e, inv_den, delta, cu_seqlens, chunk_offsets, dh, dz, lg, T, N, DELTA, H, HK,
    F: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, GATED: tl.constexpr,
):
    i_bh, i_k, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # B*H on axis 0 (axes 1-2 stop at 65535)
    i_b, i_h = i_bh // H, i_bh % H  # one query head: its own states, summed over the group by the caller
    if IS_VARLEN:  # sequence i_b of the packed row (batch 1): its rows and its states
        bos, L = seq_bounds(cu_seqlens, i_b)
        NL = tl.cdiv(L, BT)
        row = i_h.to(tl.int64) * T + bos
        lg += (i_h // (H // HK)).to(tl.int64) * T + bos
        p_n = i_h.to(tl.int64) * N + tl.load(chunk_offsets + i_b)
    else:
        L, NL = T, N
        row = i_bh.to(tl.int64) * T
        lg += (i_b * HK + i_h // (H // HK)).to(tl.int64) * T
        p_n = i_bh.to(tl.int64) * N
    qf += row * F
    do += row * D
    lin_e += row
    inv_den += row
    delta += row
    dh += p_n * F * D
    dz += p_n * F
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < F, o_v < D
    p_h = o_k[:, None] * D + o_v[None, :]
    m_h = m_k[:, None] & m_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    b_dz = tl.zeros([BK], dtype=tl.float32)
    for c in range(tl.maximum(NL - 1 - DELTA, 0), NL):  # chunks that no query block reads as far
        tl.store(dh + c * F * D + p_h, b_dh.to(dh.dtype.element_ty), mask=m_h)
        if i_v == 0:
            tl.store(dz + c * F + o_k, b_dz, mask=m_k)
    for i in range(0, NL - 1 - DELTA):  # chunks c = NL - 2 - DELTA down to 0
        c = NL - 2 - DELTA - i
        o_t = (c + DELTA + 1) * BT + tl.arange(0, BT)  # the query block that joins at chunk c
        m_t = o_t < L
        b_qf = tl.load(qf + o_t[:, None] * F + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_do = tl.load(do + o_t[:, None] * D + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_u = tl.load(lin_e + o_t, mask=m_t, other=0) * tl.load(inv_den + o_t, mask=m_t, other=0)
        b_r = b_u * tl.load(delta + o_t, mask=m_t, other=0)
        if GATED:  # decay the state over chunk c + 1; the joining queries back to the end of chunk c
            _, b_tot = gate_block(lg, (c + 1) * BT + tl.arange(0, BT), L)
            b_gq, _ = gate_block(lg, o_t, L)
            b_dec = tl.exp(b_gq + gate_total(lg, c + 1, c + DELTA + 1, L, BT))
            b_qf = (b_qf.to(tl.float32) * b_dec[:, None]).to(b_qf.dtype)
            b_dh *= tl.exp(b_tot)
            b_dz *= tl.exp(b_tot)
        b_dh += tl.dot(tl.trans(b_qf), (b_do * b_u[:, None]).to(b_qf.dtype))
        tl.store(dh + c * F * D + p_h, b_dh.to(dh.dtype.element_ty), mask=m_h)
        if i_v == 0:  # only these programs compute and store dz: the others skip the cross-warp sum
            b_dz += tl.sum(b_qf.to(tl.float32) * b_r[:, None], 0)
            tl.store(dz + c * F + o_k, b_dz, mask=m_k)


def _blocks(F: int, D: int) -> tuple[int, int]:
    """Tile of the F x D state handled by one program."""
    return (min(64, max(16, triton.next_power_of_2(F))), min(64, max(16, triton.next_power_of_2(D))))


def _layout(x: torch.Tensor, chunk: int, varlen: VarlenChunks | None) -> tuple[int, int, tuple]:
    """(N blocks per row of states, programs per head, varlen pointers) of x (B, Hx, T, E):
    dense, B rows of cdiv(T, BT) blocks; packed (B = 1), one program per sequence and NT blocks."""
    if varlen is None:
        return triton.cdiv(x.shape[2], chunk), x.shape[0], (x, x)
    return varlen.num_chunks, varlen.num_seqs, (varlen.cu_seqlens, varlen.chunk_offsets)


def state_fwd(kf, v, key_valid, num_heads_v: int, delta: int, chunk: int, varlen: VarlenChunks | None = None,
              sinks: int = 0, sink_pos: torch.Tensor | None = None, log_gate: torch.Tensor | None = None):
    """Prefix states per query block (without the sink keys).

    Args:
        kf: (B, Hk, T, F) contiguous; v: (B, Hkv, T, D) contiguous, Hk a multiple of Hkv.
        key_valid: (B, T) int8 or None (None when varlen).
        varlen: packed sequences (B = 1), or None.
        sinks, sink_pos, log_gate: as `attention_fwd`.
    Returns:
        h: (B, Hk, N, F, D) in kf's dtype; z: (B, Hk, N, F) fp32; N = NT when varlen.
    """
    B, Hk, T, F = kf.shape
    D = v.shape[-1]
    N, programs, seq_args = _layout(kf, chunk, varlen)
    h = kf.new_empty(B, Hk, N, F, D)
    z = kf.new_empty(B, Hk, N, F, dtype=torch.float32)
    BK, BV = _blocks(F, D)
    grid = (programs * Hk, triton.cdiv(F, BK), triton.cdiv(D, BV))
    _state_fwd_kernel[grid](
        kf, v, key_valid if key_valid is not None else kf, *seq_args, h, z,
        sink_pos if sink_pos is not None else kf, log_gate if log_gate is not None else kf,
        T, N, delta, Hk, Hk // num_heads_v,
        F=F, D=D, BT=chunk, BK=BK, BV=BV, HAS_VALID=key_valid is not None, IS_VARLEN=varlen is not None,
        SINKS=sinks, BS=SINK_TILE, GATED=log_gate is not None,
        num_warps=4,
    )
    return h, z


def state_bwd(qf, do, lin_e, inv_den, delta_rows, num_heads_k: int, delta: int, chunk: int,
              varlen: VarlenChunks | None = None, log_gate: torch.Tensor | None = None):
    """Reverse states per key chunk.

    One program per query head and state tile; with RQ = H / Hk > 1 query heads per key head,
    the kernel writes per-query-head states (B, H, N, F, D) and (B, H, N, F) in fp32, then the
    RQ heads of each group are summed here.

    Args:
        qf: (B, H, T, F); do: (B, H, T, D); lin_e, inv_den, delta_rows: (B, H, T) fp32; H a
            multiple of num_heads_k (Hk).
        varlen: packed sequences (B = 1), or None.
        log_gate: (B, Hk, T) fp32 contiguous, or None.
    Returns:
        dh: (B, Hk, N, F, D) in qf's dtype; dz: (B, Hk, N, F) fp32; N = NT when varlen.
    """
    B, H, T, F = qf.shape
    D = do.shape[-1]
    RQ = H // num_heads_k
    N, programs, seq_args = _layout(qf, chunk, varlen)
    dh = qf.new_empty(B, H, N, F, D, dtype=qf.dtype if RQ == 1 else torch.float32)
    dz = qf.new_empty(B, H, N, F, dtype=torch.float32)
    BK, BV = _blocks(F, D)
    grid = (programs * H, triton.cdiv(F, BK), triton.cdiv(D, BV))
    _state_bwd_kernel[grid](
        qf, do, lin_e, inv_den, delta_rows, *seq_args, dh, dz, log_gate if log_gate is not None else qf,
        T, N, delta, H, num_heads_k,
        F=F, D=D, BT=chunk, BK=BK, BV=BV, IS_VARLEN=varlen is not None, GATED=log_gate is not None, num_warps=4,
    )
    if RQ > 1:
        dh = dh.view(B, num_heads_k, RQ, N, F, D).sum(2).to(qf.dtype)
        dz = dz.view(B, num_heads_k, RQ, N, F).sum(2)
    return dh, dz
