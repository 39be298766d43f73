"""Chunked PyTorch hybrid attention: O(T * w) memory, the path used on CPU.

The sequence is cut into chunks of C >= w tokens. For a query in chunk n, every key of the
sliding window lies in chunks n-1 and n, and every key in chunks <= n-2 is older than the
window. So each chunk needs: scores against chunks n-1 and n (C x 2C, masked into window and
linear parts by absolute position), the running linear state of chunks <= n-2, and the scores
against the `sinks` first keys of the row (a C x sinks tile). Same semantics, shift, null key and
padding rules as `naive.py`.

Sinks leave the linear part by zeroing their key features (as padding keys). The gate's decay
is carried in log space relative to chunk boundaries, so no exponential exceeds 1: a key j of
chunk m reaches the end of its chunk with exp(Gtot_m - Gloc_j), the state at the end of chunk m
is H_m = exp(Gtot_m) H_{m-1} + U_m, and a query i of chunk n reads H_{n-2} decayed by
exp(Gloc_i + Gtot_{n-1}) (Gloc: inclusive cumulative log-gate inside a chunk, Gtot: its total).

GQA is computed group-wise: queries are viewed as (B, Hkv, Rk, Rq, T, D), keys and values
broadcast over the group, so repeated K/V are never materialised.
"""

import torch
import torch.nn.functional as F

from .naive import sink_keys, stabiliser


def _chunk(x: torch.Tensor, num_chunks: int, chunk: int) -> torch.Tensor:
    """(..., T, E) -> (..., N, C, E), zero-padding T up to N * C."""
    pad = num_chunks * chunk - x.shape[-2]
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.unflatten(-2, (num_chunks, chunk))


def _previous(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift chunks by one along `dim` (chunk n sees chunk n-1; chunk 0 sees zeros)."""
    x = x.movedim(dim, 0)
    x = torch.cat([torch.zeros_like(x[:1]), x[:-1]], dim=0)
    return x.movedim(0, dim)


def _gated_states(u: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """H_m = exp(total_m) H_{m-1} + u_m for every chunk m.

    u: (..., N, F, E) per-chunk contributions decayed to their chunk's end; total: (..., N)
    each chunk's summed log-gate. Returns (..., N, F, E), by one masked N x N decay matrix.
    """
    N = u.shape[-3]
    cum = total.cumsum(-1)
    decay = (cum[..., :, None] - cum[..., None, :]).clamp_max(0.0).exp()
    decay = decay * torch.ones(N, N, dtype=torch.bool, device=u.device).tril()
    return (decay @ u.flatten(-2)).view(u.shape)


def hybrid_attention_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qf: torch.Tensor,
    kf: torch.Tensor,
    gamma: torch.Tensor,
    window: int,
    linear: bool = True,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
    chunk_size: int = 64,
    *,
    sinks: int = 0,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hybrid attention in chunks; arguments and result as `hybrid_attention_naive`.

    Args:
        chunk_size: chunk length C; raised to the window when the window is larger.
    Returns:
        (B, H, T, D) in the dtype of q.
    """
    B, H, T, D = q.shape
    Hkv, Hk, Fdim = k.shape[1], kf.shape[1], kf.shape[-1]
    Rk, Rq = Hk // Hkv, H // Hk
    scale = D**-0.5 if scale is None else scale
    C = max(chunk_size, window, 1)
    N = -(-T // C)
    dev = q.device

    # (B, G, Rk, Rq, N, C, E) for the query side, broadcastable (B, G, 1|Rk, 1, N, C, E) for keys.
    qc = _chunk(q.float().view(B, Hkv, Rk, Rq, T, D), N, C)
    qfc = _chunk(qf.float().view(B, Hkv, Rk, Rq, T, Fdim), N, C)
    kc = _chunk(k.float().view(B, Hkv, 1, 1, T, D), N, C)
    vc = _chunk(v.float().view(B, Hkv, 1, 1, T, D), N, C)
    kfc = _chunk(kf.float().view(B, Hkv, Rk, 1, T, Fdim), N, C)
    valid_t = torch.ones(B, T, dtype=torch.bool, device=dev) if key_valid is None else key_valid.bool()
    sink_t = sink_keys(valid_t, sinks)
    valid = torch.zeros(B, N * C, dtype=torch.bool, device=dev)
    valid[:, :T] = valid_t
    valid = valid.view(B, 1, 1, 1, N, 1, C)
    is_sink = torch.zeros(B, N * C, dtype=torch.bool, device=dev)
    is_sink[:, :T] = sink_t
    is_sink = is_sink.view(B, 1, 1, 1, N, 1, C)
    kfc = kfc * (valid & ~is_sink).transpose(-1, -2)  # padding and sinks add nothing to the linear terms

    b = torch.arange(C, device=dev)[:, None]  # query offset in its chunk
    a = torch.arange(C, device=dev)[None, :]  # key offset in its chunk
    win_cur = (a <= b) & (a > b - window) & valid
    win_prev = (a > b + C - window) & _previous(valid, 4)

    s_cur = scale * qc @ kc.transpose(-1, -2)
    s_prev = scale * qc @ _previous(kc, 4).transpose(-1, -2)
    g = gamma.float().view(1, Hkv, Rk, Rq, 1, 1, 1)
    bias = 0.0 if sink_bias is None else sink_bias.float().view(1, Hkv, Rk, Rq, 1, 1, 1)
    if sink_bias is not None:
        s_cur = s_cur + bias * is_sink
        s_prev = s_prev + bias * _previous(is_sink, 4)
    s_cur = s_cur.masked_fill(~win_cur, float("-inf"))
    s_prev = s_prev.masked_fill(~win_prev, float("-inf"))
    m = torch.maximum(s_cur.amax(-1, keepdim=True), s_prev.amax(-1, keepdim=True))

    if sinks:
        # The sink keys (<= sinks per row) as one extra tile: (B, G, 1, 1, 1, S, D) and positions.
        pos = torch.arange(T, device=dev).expand(B, T)
        order = torch.where(sink_t, pos, T + pos).argsort(-1)[:, :sinks]  # sink positions first
        s_pos = torch.gather(pos, 1, order)
        s_ok = torch.gather(sink_t, 1, order)
        take = s_pos.view(B, 1, 1, 1, -1, 1).expand(B, Hkv, 1, 1, s_pos.shape[1], D)  # min(sinks, T)
        k_s = torch.gather(kc.flatten(4, 5), 4, take)[..., None, :, :]  # (B, G, 1, 1, 1, S, D)
        v_s = torch.gather(vc.flatten(4, 5), 4, take)[..., None, :, :]
        i_abs = (torch.arange(N, device=dev)[:, None] * C + torch.arange(C, device=dev)[None, :])[..., None]
        vis = (s_pos.view(B, 1, 1, 1, 1, 1, -1) <= i_abs - window) & s_ok.view(B, 1, 1, 1, 1, 1, -1)
        s_snk = (scale * qc @ k_s.transpose(-1, -2) + bias).masked_fill(~vis, float("-inf"))
        m = torch.maximum(m, s_snk.amax(-1, keepdim=True))

    v_prev = _previous(vc, 4)
    if linear:
        lin_cur = (qfc @ kfc.transpose(-1, -2)) * (a <= b - window)
        lin_prev = (qfc @ _previous(kfc, 4).transpose(-1, -2)) * (a <= b + C - window)
        if log_gate is None:
            # State of chunks <= n-2: inclusive cumulative sum shifted by two chunks.
            kv = _previous(_previous((kfc.transpose(-1, -2) @ vc).cumsum(4), 4), 4)
            ksum = _previous(_previous(kfc.sum(-2, keepdim=True).cumsum(4), 4), 4)
        else:
            lg = _chunk(log_gate.float().view(B, Hkv, Rk, 1, T, 1), N, C)[..., 0]  # (B, G, Rk, 1, N, C)
            gloc = lg.cumsum(-1)
            gtot = gloc[..., -1]
            lin_cur = lin_cur * (gloc[..., :, None] - gloc[..., None, :]).clamp_max(0.0).exp()
            to_end = (gtot[..., None] - gloc).exp()[..., None]  # (B, G, Rk, 1, N, C, 1)
            from_prev = _previous(gtot[..., None] - gloc, 4)  # key j of chunk n-1 to that chunk's end
            lin_prev = lin_prev * (gloc[..., :, None] + from_prev[..., None, :]).exp()
            kv_end = _gated_states((kfc * to_end).transpose(-1, -2) @ vc, gtot)
            z_end = _gated_states((kfc * to_end).sum(-2, keepdim=True), gtot)
            into = (gloc + _previous(gtot, 4)[..., None]).exp()[..., None]  # decay from end of n-2 to i
            kv = _previous(_previous(kv_end, 4), 4)
            ksum = _previous(_previous(z_end, 4), 4)
            qfc_state = qfc * into
        q_state = qfc if log_gate is None else qfc_state
        lin_den = (lin_cur.sum(-1, keepdim=True) + lin_prev.sum(-1, keepdim=True)
                   + (q_state * ksum).sum(-1, keepdim=True))
        c, e, null = stabiliser(m, lin_den)
    else:
        c, _, null = stabiliser(m, torch.zeros_like(m))

    w_cur, w_prev = g * torch.exp(s_cur - c), g * torch.exp(s_prev - c)
    num = w_cur @ vc + w_prev @ v_prev
    den = w_cur.sum(-1, keepdim=True) + w_prev.sum(-1, keepdim=True) + null
    if sinks:
        w_snk = g * torch.exp(s_snk - c)
        num = num + w_snk @ v_s
        den = den + w_snk.sum(-1, keepdim=True)
    if linear:
        num = num + e * (lin_cur @ vc + lin_prev @ v_prev + q_state @ kv)
        den = den + e * lin_den
    y = num / torch.where(den > 0, den, 1.0)
    return y.flatten(4, 5)[..., :T, :].reshape(B, H, T, D).to(q.dtype)
