"""Backward kernels of the chunked hybrid attention (Triton).

With y_i = sum_j W_ij v_j / den_i, W_ij = gamma e^{s_ij - c_i} [window] + e^{-c_i} qf_i.kf_j
[linear] and c_i a constant (the output does not depend on it):

    dW_ij = (do_i . v_j - delta_i) / den_i,        delta_i = do_i . y_i
    dv_j  = sum_i W_ij / den_i do_i
    ds_ij = dW_ij gamma e^{s_ij - c_i}  ->  dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i
    dp_ij = dW_ij e^{-c_i}              ->  dqf_i = sum_j dp_ij kf_j,     dkf_j = sum_i dp_ij qf_i
    dgamma_h = sum_ij dW_ij e^{s_ij - c_i}

Attention sinks: the sink keys' scores carry sink_bias (d sink_bias_h = sum of ds_ij over the
sink entries, window or sink tile). The dq kernel also handles the sink tile (sinks older than
the window): dq, dgamma and d sink_bias as for window keys, and, per query block, partial
dk, dv of the sink keys ((B, H, N, SINKS, D) fp32), which `attention_bwd` sums over the blocks
and the heads of a group and adds at the sinks' positions. The dk/dv kernel treats a sink key
inside the window as a window key (with its bias) and keeps sinks out of dkf and of the linear
part of dv.

Gate (`GATED`): with l_ij = qf_i.kf_j exp(G_i - G_j) and dp_ij = dW_ij e^{-c_i}, the features'
gradients carry the decay (dqf_i = sum_j dp_ij d_ij kf_j, likewise dkf_j) and the cumulative
log-gate gets dG_t = sum_j dp_tj l_tj (t as a query: the dq kernel, per query head) - sum_i
dp_it l_it (t as a key: the dk/dv kernel, per feature head); `attention_bwd` returns dG and the
caller turns it into d log_gate by a reverse cumulative sum. The far part uses the decayed
states of `triton_state.py`: dG_i += qf~_i . g~_i with qf~ the query features decayed to the
state's chunk end, and for a key dG_j -= kf_j . dkf_j(far).

Near key blocks are rebuilt tile by tile as in the forward; the far (state) part uses the
forward states h, z (kept from the forward) for dqf and the reverse states dh, dz for dkf, dv
(`triton_state.py`).
Two kernels, no atomics: `_bwd_dq_kernel` per query block (dq, dqf, dgamma partials) and
`_bwd_dkv_kernel` per key block (or tile of one, `dkv_split_for`) of a K/V head, which loops
over the query heads of its GQA group (dk, dv summed over the group; dkf over the query heads
sharing a feature head).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_fwd import SINK_TILE, gate_block, gate_total, sink_positions
from .triton_varlen import VarlenChunks, seq_chunk


@triton.jit
def _bwd_preprocess_kernel(o, do, delta, T, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    i_bh, i_n = tl.program_id(0), tl.program_id(1)
    o_i, o_d = i_n * BT + tl.arange(0, BT), tl.arange(0, BD)
    m = (o_i < T)[:, None] & (o_d < D)[None, :]
    p = i_bh.to(tl.int64) * T * D + o_i[:, None] * D + o_d[None, :]
    b_o = tl.load(o + p, mask=m, other=0).to(tl.float32)
    b_do = tl.load(do + p, mask=m, other=0).to(tl.float32)
    tl.store(delta + i_bh.to(tl.int64) * T + o_i, tl.sum(b_o * b_do, 1), mask=o_i < T)


@triton.jit
def _bwd_dq_kernel(
    q, k, v, qf, kf, gamma, valid, h, z, do, cs, inv_den, lin_e, delta, dq, dqf, dg, chunk_indices, cu_seqlens,
    sink_pos, sink_bias, dks, dvs, dbias, lg, dgq,
    scale, T, N, W, DELTA, H, HKV, HK,
    D: tl.constexpr, F: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
    LINEAR: tl.constexpr, HAS_VALID: tl.constexpr, IS_VARLEN: tl.constexpr,
    SINKS: tl.constexpr, BS: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
):
    i_bh, i_t = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_hv = i_b * HKV + i_h // (H // HKV)
    i_hk = i_b * HK + i_h // (H // HK)
    k += i_hv.to(tl.int64) * T * D
    v += i_hv.to(tl.int64) * T * D
    kf += i_hk.to(tl.int64) * T * F
    lg += i_hk.to(tl.int64) * T
    if IS_VARLEN:  # block i_n of a sequence of L tokens from bos: positions below are local to it
        i_n, bos, L = seq_chunk(chunk_indices, cu_seqlens, i_t)
        q, do, dq, k, v = q + bos * D, do + bos * D, dq + bos * D, k + bos * D, v + bos * D
        qf, dqf, kf = qf + bos * F, dqf + bos * F, kf + bos * F
        cs, inv_den, lin_e, delta = cs + bos, inv_den + bos, lin_e + bos, delta + bos
        lg, dgq = lg + bos, dgq + bos
    else:
        i_n, L = i_t, T

    o_i = i_n * BT + tl.arange(0, BT)
    o_d, o_f = tl.arange(0, BD), tl.arange(0, BF)
    m_i, m_d, m_f = o_i < L, o_d < D, o_f < F
    p_qd = i_bh.to(tl.int64) * T * D + o_i[:, None] * D + o_d[None, :]
    p_qf = i_bh.to(tl.int64) * T * F + o_i[:, None] * F + o_f[None, :]
    p_row = i_bh.to(tl.int64) * T + o_i
    m_qd, m_qf = m_i[:, None] & m_d[None, :], m_i[:, None] & m_f[None, :]
    b_q = tl.load(q + p_qd, mask=m_qd, other=0)
    b_do = tl.load(do + p_qd, mask=m_qd, other=0)
    b_c = tl.load(cs + p_row, mask=m_i, other=0)
    b_inv = tl.load(inv_den + p_row, mask=m_i, other=0)
    b_delta = tl.load(delta + p_row, mask=m_i, other=0)
    b_e = tl.load(lin_e + p_row, mask=m_i, other=0)
    b_g = tl.load(gamma + i_h).to(tl.float32)

    b_dq = tl.zeros([BT, BD], dtype=tl.float32)
    b_dqf = tl.zeros([BT, BF], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    if LINEAR:
        b_qf = tl.load(qf + p_qf, mask=m_qf, other=0)
        p_state = i_hk.to(tl.int64) * N + i_t
        b_h = tl.load(h + p_state * F * D + o_f[:, None] * D + o_d[None, :],
                      mask=m_f[:, None] & m_d[None, :], other=0)
        b_z = tl.load(z + p_state * F + o_f, mask=m_f, other=0)
        b_u = b_e * b_inv
        b_dqf += tl.dot((b_do * b_u[:, None]).to(b_h.dtype), tl.trans(b_h))
        b_dqf -= (b_u * b_delta)[:, None] * b_z[None, :]
        if GATED:  # b_dqf is the gradient of the features decayed to the state's chunk end
            b_gq, _ = gate_block(lg, o_i, L)
            b_off = gate_total(lg, tl.maximum(i_n - DELTA, 0), i_n, L, BT)  # blocks n - delta .. n - 1
            b_sdec = tl.exp(b_gq + b_off)
            b_dG = tl.sum(b_dqf * b_qf.to(tl.float32), 1) * b_sdec
            b_dqf *= b_sdec[:, None]

    b_db = tl.zeros([BT], dtype=tl.float32)  # d sink_bias: sum of ds over the sink entries
    if SINKS > 0:  # the sink tile (sinks older than the window), and its keys' partial dk, dv
        p_s = sink_positions(sink_pos, i_b, L, SINKS, BS, HAS_VALID)
        s_last = tl.max(p_s, 0)
        b_bias = 0.0
        if HAS_BIAS:
            b_bias = tl.load(sink_bias + i_h).to(tl.float32)
        m_s = p_s >= 0
        b_ks = tl.load(k + p_s[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0)
        b_vs = tl.load(v + p_s[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0)
        vis = (o_i[:, None] - p_s[None, :] >= W) & m_s[None, :]
        # names of their own: a name the loop below reassigns must keep its shape (BT x BT)
        b_ews = tl.where(vis, tl.exp(tl.dot(b_q, tl.trans(b_ks)) * scale + b_bias - b_c[:, None]), 0.0)
        b_dws = (tl.dot(b_do, tl.trans(b_vs.to(b_do.dtype))) - b_delta[:, None]) * b_inv[:, None]
        b_dss = b_dws * b_ews * b_g
        b_dg += tl.sum(b_dws * b_ews, 1)
        b_db += tl.sum(b_dss, 1)
        b_dq += tl.dot(b_dss.to(b_ks.dtype), b_ks)
        o_s = tl.arange(0, BS)
        p_part = (i_bh.to(tl.int64) * N + i_t) * SINKS * D + o_s[:, None] * D + o_d[None, :]
        m_part = (o_s < SINKS)[:, None] & m_d[None, :]
        tl.store(dks + p_part, tl.dot(tl.trans(b_dss).to(b_q.dtype), b_q) * scale, mask=m_part)
        tl.store(dvs + p_part, tl.dot(tl.trans(b_ews * (b_g * b_inv)[:, None]).to(b_do.dtype), b_do), mask=m_part)

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
                b_ew = tl.where(win, tl.exp(tl.dot(b_q, tl.trans(b_k)) * scale
                                            + tl.where(snk, b_bias, 0.0)[None, :] - b_c[:, None]), 0.0)
            else:
                b_ew = tl.where(win, tl.exp(tl.dot(b_q, tl.trans(b_k)) * scale - b_c[:, None]), 0.0)
        else:
            b_ew = tl.where(win, tl.exp(tl.dot(b_q, tl.trans(b_k)) * scale - b_c[:, None]), 0.0)
        b_dw = (tl.dot(b_do, tl.trans(b_v.to(b_do.dtype))) - b_delta[:, None]) * b_inv[:, None]
        b_dg += tl.sum(b_dw * b_ew, 1)
        b_dq += tl.dot((b_dw * b_ew * b_g).to(b_k.dtype), b_k)
        if HAS_BIAS:
            b_db += tl.sum(tl.where(snk[None, :], b_dw * b_ew * b_g, 0.0), 1)
        if LINEAR:
            if (i_n - j) * BT + BT - 1 >= W:  # the block holds keys older than the window
                b_kf = tl.load(kf + o_j[:, None] * F + o_f[None, :], mask=m_lin[:, None] & m_f[None, :], other=0)
                lin = (diff >= W) & m_lin[None, :]
                b_dp = tl.where(lin, b_dw * b_e[:, None], 0.0)
                if GATED:  # decay exp(Gloc_i + totals of blocks j .. n-1 - Gloc_j)
                    b_gk, _ = gate_block(lg, o_j, L)
                    b_dp *= tl.exp(tl.minimum(b_gq[:, None] + b_off - b_gk[None, :], 0.0))
                    b_dG += tl.sum(b_dp * tl.dot(b_qf, tl.trans(b_kf)), 1)
                b_dqf += tl.dot(b_dp.to(b_kf.dtype), b_kf)
            if GATED:
                b_off -= tl.sum(tl.load(lg + o_j, mask=o_j < L, other=0.0), 0)  # now blocks j + 1 .. n - 1

    if GATED:
        tl.store(dgq + p_row, b_dG, mask=m_i)
    tl.store(dq + p_qd, (b_dq * scale).to(dq.dtype.element_ty), mask=m_qd)
    if LINEAR:
        tl.store(dqf + p_qf, b_dqf.to(dqf.dtype.element_ty), mask=m_qf)
    tl.store(dg + i_bh.to(tl.int64) * N + i_t, tl.sum(b_dg, 0))
    if HAS_BIAS:
        tl.store(dbias + i_bh.to(tl.int64) * N + i_t, tl.sum(b_db, 0))


@triton.jit
def _bwd_dkv_kernel(
    q, k, v, qf, kf, gamma, valid, dh, dz, do, cs, inv_den, lin_e, delta, dk, dv, dkf, chunk_indices, cu_seqlens,
    sink_pos, sink_bias, lg, dgk,
    scale, T, N, W, DELTA, H, HKV, HK,
    D: tl.constexpr, F: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BK: tl.constexpr,
    LINEAR: tl.constexpr, HAS_VALID: tl.constexpr, IS_VARLEN: tl.constexpr,
    SINKS: tl.constexpr, BS: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
):
    i_bg, i_s = tl.program_id(0), tl.program_id(1)  # B*G on axis 0: axes 1-2 stop at 65535
    i_t, i_sub = i_s // (BT // BK), i_s % (BT // BK)  # key tile i_sub (BK keys) of block i_t
    i_b, i_g = i_bg // HKV, i_bg % HKV
    RK, RQ = HK // HKV, H // HK
    if IS_VARLEN:  # key block i_c of a sequence of L tokens from bos (NL blocks): local positions
        i_c, bos, L = seq_chunk(chunk_indices, cu_seqlens, i_t)
        q, do, k, v, dk, dv = q + bos * D, do + bos * D, k + bos * D, v + bos * D, dk + bos * D, dv + bos * D
        qf, kf, dkf = qf + bos * F, kf + bos * F, dkf + bos * F
        cs, inv_den, lin_e, delta = cs + bos, inv_den + bos, lin_e + bos, delta + bos
        lg, dgk = lg + bos, dgk + bos
        NL = tl.cdiv(L, BT)
    else:
        i_c, L, NL = i_t, T, N

    o_j = i_c * BT + i_sub * BK + tl.arange(0, BK)
    o_d, o_f = tl.arange(0, BD), tl.arange(0, BF)
    m_j, m_d, m_f = o_j < L, o_d < D, o_f < F
    if HAS_VALID:
        m_j &= tl.load(valid + i_b.to(tl.int64) * T + o_j, mask=o_j < T, other=0) != 0
    m_lin = m_j  # keys that can be linear: not sinks
    if SINKS > 0:
        snk = m_j & (o_j <= tl.max(sink_positions(sink_pos, i_b, L, SINKS, BS, HAS_VALID), 0))
        m_lin = m_j & ~snk
    p_kd = i_bg.to(tl.int64) * T * D + o_j[:, None] * D + o_d[None, :]
    m_kd, m_kf = (o_j < L)[:, None] & m_d[None, :], (o_j < L)[:, None] & m_f[None, :]
    b_k = tl.load(k + p_kd, mask=m_j[:, None] & m_d[None, :], other=0)
    b_v = tl.load(v + p_kd, mask=m_j[:, None] & m_d[None, :], other=0)
    b_dk = tl.zeros([BK, BD], dtype=tl.float32)
    b_dv = tl.zeros([BK, BD], dtype=tl.float32)

    for rk in range(0, RK):
        i_hk = (i_b * HK + i_g * RK + rk).to(tl.int64)
        b_dkf = tl.zeros([BK, BF], dtype=tl.float32)
        if LINEAR:
            p_kf = i_hk * T * F + o_j[:, None] * F + o_f[None, :]
            b_kf = tl.load(kf + p_kf, mask=m_lin[:, None] & m_f[None, :], other=0)
            p_state = i_hk * N + i_t
            b_dh = tl.load(dh + p_state * F * D + o_f[:, None] * D + o_d[None, :],
                           mask=m_f[:, None] & m_d[None, :], other=0)
            b_dz = tl.load(dz + p_state * F + o_f, mask=m_f, other=0)
            if GATED:  # the reverse state is at the end of this key's chunk: decay each key to there
                o_blk = i_c * BT + tl.arange(0, BT)
                b_lgb = tl.load(lg + i_hk * T + o_blk, mask=o_blk < L, other=0.0)
                b_gk, _ = gate_block(lg + i_hk * T, o_j, L)
                b_gk += tl.sum(tl.where(tl.arange(0, BT) < i_sub * BK, b_lgb, 0.0), 0)  # Gloc_j in block i_c
                b_kdec = tl.exp(tl.sum(b_lgb, 0) - b_gk)
                b_dv += tl.dot((b_kf.to(tl.float32) * b_kdec[:, None]).to(b_kf.dtype), b_dh.to(b_kf.dtype))
                b_dkf += (tl.dot(b_v.to(b_dh.dtype), tl.trans(b_dh)) - b_dz[None, :]) * b_kdec[:, None]
                b_dG = -tl.sum(b_dkf * b_kf.to(tl.float32), 1)
            else:
                b_dv += tl.dot(b_kf, b_dh.to(b_kf.dtype))
                b_dkf += tl.dot(b_v.to(b_dh.dtype), tl.trans(b_dh)) - b_dz[None, :]
        for rq in range(0, RQ):
            i_h = i_g * RK * RQ + rk * RQ + rq
            i_bh = (i_b * H + i_h).to(tl.int64)
            b_g = tl.load(gamma + i_h).to(tl.float32)
            if HAS_BIAS:
                b_kb = tl.where(snk, tl.load(sink_bias + i_h).to(tl.float32), 0.0)  # per-key score offset
            b_off = 0.0  # gate: totals of blocks i_c .. n - 1
            for n in range(i_c, tl.minimum(i_c + DELTA, NL - 1) + 1):
                o_i = n * BT + tl.arange(0, BT)
                m_i = o_i < L
                p_qd = i_bh * T * D + o_i[:, None] * D + o_d[None, :]
                p_row = i_bh * T + o_i
                b_q = tl.load(q + p_qd, mask=m_i[:, None] & m_d[None, :], other=0)
                b_do = tl.load(do + p_qd, mask=m_i[:, None] & m_d[None, :], other=0)
                b_c = tl.load(cs + p_row, mask=m_i, other=0)
                b_inv = tl.load(inv_den + p_row, mask=m_i, other=0)
                b_delta = tl.load(delta + p_row, mask=m_i, other=0)
                # tiles are transposed: rows are keys j, columns queries i
                diff = o_i[None, :] - o_j[:, None]
                win = (diff >= 0) & (diff < W) & m_j[:, None]
                if HAS_BIAS:
                    b_ew = tl.where(win, tl.exp(tl.dot(b_k, tl.trans(b_q)) * scale + b_kb[:, None] - b_c[None, :]), 0.0)
                else:
                    b_ew = tl.where(win, tl.exp(tl.dot(b_k, tl.trans(b_q)) * scale - b_c[None, :]), 0.0)
                b_w = b_g * b_ew
                b_dw = (tl.dot(b_v.to(b_do.dtype), tl.trans(b_do)) - b_delta[None, :]) * b_inv[None, :]
                b_dk += tl.dot((b_dw * b_w).to(b_q.dtype), b_q)
                if LINEAR:
                    if (n - i_c) * BT + BT - 1 - i_sub * BK >= W:  # some queries see some keys as linear
                        b_qf = tl.load(qf + i_bh * T * F + o_i[:, None] * F + o_f[None, :],
                                       mask=m_i[:, None] & m_f[None, :], other=0)
                        lin = (diff >= W) & m_lin[:, None]
                        b_e = tl.load(lin_e + p_row, mask=m_i, other=0)
                        b_dp = tl.where(lin, b_dw * b_e[None, :], 0.0)
                        if GATED:
                            b_gq, _ = gate_block(lg + i_hk * T, o_i, L)
                            b_dec = tl.exp(tl.minimum(b_gq[None, :] + b_off - b_gk[:, None], 0.0))
                            b_l = tl.where(lin, tl.dot(b_kf, tl.trans(b_qf)) * b_dec, 0.0)
                            b_dG -= tl.sum(b_dp * b_l, 1)
                            b_dp *= b_dec
                            b_w += b_l * b_e[None, :]
                        else:
                            b_w += tl.where(lin, tl.dot(b_kf, tl.trans(b_qf)) * b_e[None, :], 0.0)
                        b_dkf += tl.dot(b_dp.to(b_qf.dtype), b_qf)
                b_dv += tl.dot((b_w * b_inv[None, :]).to(b_do.dtype), b_do)
                if GATED:
                    if LINEAR:
                        b_off += tl.sum(tl.load(lg + i_hk * T + o_i, mask=m_i, other=0.0), 0)
        if LINEAR:
            b_dkf = tl.where(m_lin[:, None], b_dkf, 0.0)
            tl.store(dkf + i_hk * T * F + o_j[:, None] * F + o_f[None, :],
                     b_dkf.to(dkf.dtype.element_ty), mask=m_kf)
            if GATED:
                tl.store(dgk + i_hk * T + o_j, tl.where(m_lin, b_dG, 0.0), mask=o_j < L)
    tl.store(dk + p_kd, (b_dk * scale).to(dk.dtype.element_ty), mask=m_kd)
    tl.store(dv + p_kd, b_dv.to(dv.dtype.element_ty), mask=m_kd)


@dataclass(frozen=True)
class BackwardLaunch:
    """Launch settings of the backward kernels; a field left None takes its shape-keyed default.

    dq, dkv: (num_warps, num_stages) of the dq and dk/dv kernels (`dq_launch_for`,
    `dkv_launch_for`); dkv_split: key tiles per block of the dk/dv kernel (`dkv_split_for`).
    """

    dq: tuple[int, int] | None = None
    dkv: tuple[int, int] | None = None
    dkv_split: int | None = None


def dq_launch_for(BD: int, BF: int, element_size: int) -> tuple[int, int]:
    """(num_warps, num_stages) of the dq kernel for padded head size BD, feature size BF and
    the bytes per element of q: (4, 1) for 16-bit inputs with BD, BF >= 64, else (4, 2).

    (4, 1) is the faster launch at model sizes, but its compiled kernel faults on small masked
    tiles (fp16, D = 24, F = 12: an out-of-range *shared* address), so smaller tiles keep
    (4, 2); measurements in docs/performance.md.
    """
    return (4, 1) if element_size == 2 and min(BD, BF) >= 64 else (4, 2)


def dkv_split_for(chunk: int, split: int | None = None) -> int:
    """Key tiles per block of the dk/dv kernel: `split` when given (checked: tiles of
    chunk / split >= 16 keys), else 2 for blocks of 64 (tiles of 32 keys) and 1 otherwise
    (measurements in docs/performance.md)."""
    split = split or (2 if chunk == 64 else 1)
    if split < 1 or chunk % split or chunk // split < 16:
        raise ValueError(f"dkv_split={split}: the block of {chunk} keys must split into tiles of >= 16")
    return split


def dkv_launch_for(BK: int) -> tuple[int, int]:
    """(num_warps, num_stages) of the dk/dv kernel on tiles of BK keys: (4, 2) for tiles of 32
    keys or fewer, (8, 2) for larger ones (measurements in docs/performance.md)."""
    return (4, 2) if BK <= 32 else (8, 2)


def attention_bwd(q, k, v, qf, kf, gamma, h, z, o, do, cs, inv_den, lin_e, key_valid, reverse_states,
                  window: int, linear: bool, scale: float, delta: int, chunk: int,
                  varlen: VarlenChunks | None = None, dq_launch: tuple[int, int] | None = None,
                  dkv_launch: tuple[int, int] | None = None, dkv_split: int | None = None,
                  sinks: int = 0, sink_pos: torch.Tensor | None = None,
                  sink_bias: torch.Tensor | None = None, sink_index: torch.Tensor | None = None,
                  log_gate: torch.Tensor | None = None):
    """Gradients of the hybrid attention.

    Args:
        q, k, v, qf, kf, gamma, h, z, key_valid, varlen: as for `attention_fwd` (h, z: the
            forward's prefix states); o, do: (B, H, T, D); cs, inv_den, lin_e: (B, H, T) saved by
            the forward.
        reverse_states: callable(delta_rows (B, H, T) fp32) -> (dh, dz), the reverse states
            of `state_bwd` (any tensors when not linear).
        dq_launch, dkv_launch: (num_warps, num_stages) of the dq and dk/dv kernels (None picks
            `dq_launch_for` / `dkv_launch_for`).
        dkv_split: key tiles per block in the dk/dv kernel (None: `dkv_split_for(chunk)`).
            `BackwardLaunch` carries these three from `hybrid_attention_triton`.
        sinks, sink_pos, sink_bias: as `attention_fwd`.
        sink_index: with sinks, (B or number of sequences, sinks) int64 flat index into
            (B * T) of each sink key (its row's or sequence's), -1 for none.
    Returns:
        dq, dk, dv, dqf, dkf (dqf, dkf None when not linear), dgamma (H,) fp32, dsink_bias (H,)
        fp32 or None.
    """
    B, H, T, D = q.shape
    Hkv, Hk, F = k.shape[1], kf.shape[1], qf.shape[-1]
    BD, BF = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(F))
    dq_launch = dq_launch or dq_launch_for(BD, BF, q.element_size())
    delta_rows = torch.empty_like(cs)
    # row-wise, so blind to sequence boundaries: dense blocks over the packed row too
    _bwd_preprocess_kernel[(B * H, triton.cdiv(T, chunk))](o, do, delta_rows, T, D=D, BT=chunk, BD=BD)
    N = triton.cdiv(T, chunk) if varlen is None else varlen.num_chunks
    dh, dz = reverse_states(delta_rows)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dqf = torch.empty_like(qf) if linear else None
    dkf = torch.empty_like(kf) if linear else None
    dg = q.new_empty(B, H, N, dtype=torch.float32)
    gated = log_gate is not None and linear
    valid = key_valid if key_valid is not None else q
    seq_args = (q, q) if varlen is None else (varlen.chunk_indices, varlen.cu_seqlens)
    consts = dict(D=D, F=F, BT=chunk, BD=BD, BF=BF, LINEAR=linear, HAS_VALID=key_valid is not None,
                  IS_VARLEN=varlen is not None, SINKS=sinks, BS=SINK_TILE, HAS_BIAS=sink_bias is not None,
                  GATED=gated)
    sink_args = (sink_pos if sink_pos is not None else q, sink_bias if sink_bias is not None else gamma)
    dks = dvs = dbias = dg
    dgq = dgk = dg
    if gated:
        dgq = q.new_empty(B, H, T, dtype=torch.float32)
        dgk = q.new_empty(B, Hk, T, dtype=torch.float32)
    lg = log_gate if gated else dg
    if sinks:  # per query block: partial dk, dv of the sink tile's keys
        dks = q.new_zeros(B, H, N, sinks, D, dtype=torch.float32)
        dvs = torch.zeros_like(dks)
        if sink_bias is not None:
            dbias = torch.empty_like(dg)
    _bwd_dq_kernel[(B * H, N)](
        q, k, v, qf, kf, gamma, valid, h, z, do, cs, inv_den, lin_e, delta_rows, dq,
        dqf if linear else dq, dg, *seq_args, *sink_args, dks, dvs, dbias, lg, dgq,
        scale, T, N, window, delta, H, Hkv, Hk, **consts,
        num_warps=dq_launch[0], num_stages=dq_launch[1],
    )
    split = dkv_split_for(chunk, dkv_split)
    dkv_launch = dkv_launch or dkv_launch_for(chunk // split)
    _bwd_dkv_kernel[(B * Hkv, N * split)](
        q, k, v, qf, kf, gamma, valid, dh, dz, do, cs, inv_den, lin_e, delta_rows, dk, dv,
        dkf if linear else dk, *seq_args, *sink_args, lg, dgk, scale, T, N, window, delta, H, Hkv, Hk, BK=chunk // split,
        **consts, num_warps=dkv_launch[0], num_stages=dkv_launch[1],
    )
    dsink_bias = None
    if sinks:
        dk, dv = _add_sink_partials(dk, dks, sink_index, varlen), _add_sink_partials(dv, dvs, sink_index, varlen)
        if sink_bias is not None:
            dsink_bias = dbias.sum((0, 2))
    dG = None
    if gated:
        dG = dgk + dgq.view(B, Hk, H // Hk, T).sum(2)
    return dq, dk, dv, dqf, dkf, dg.sum((0, 2)), dsink_bias, dG


def _add_sink_partials(dx: torch.Tensor, part: torch.Tensor, sink_index: torch.Tensor,
                       varlen: VarlenChunks | None) -> torch.Tensor:
    """dx (B, Hkv, T, D) plus the sink keys' per-block partials part (B, H, N, S, D) fp32, summed
    over the blocks of each row (or sequence) and the query heads of each K/V head."""
    B, Hkv, T, D = dx.shape
    H, S = part.shape[1], part.shape[3]
    if varlen is None:
        part = part.sum(2)  # (B, H, S, D)
    else:  # blocks of each sequence: (1, H, NT, S, D) -> (num_seqs, H, S, D)
        seq = varlen.chunk_indices[:, 0].long()
        part = part.new_zeros(1, H, varlen.num_seqs, S, D).index_add_(2, seq, part)[0].transpose(0, 1)
    part = part.view(part.shape[0], Hkv, H // Hkv, S, D).sum(2)  # (B | seqs, Hkv, S, D)
    ok = sink_index >= 0  # (B | seqs, S); sink positions are distinct
    index = sink_index[ok]
    rows, pos = index // T, index % T
    dx[rows, :, pos] = (dx[rows, :, pos].float() + part.transpose(1, 2)[ok]).to(dx.dtype)
    return dx
