"""Chunked PyTorch hybrid attention: O(T * w) memory, the path used on CPU.

The sequence is cut into chunks of C >= w tokens. For a query in chunk n, every key of the
sliding window lies in chunks n-1 and n, and every key in chunks <= n-2 is older than the
window. So each chunk needs: scores against chunks n-1 and n (C x 2C, masked into window and
linear parts by absolute position) and the running linear state of chunks <= n-2 (a cumulative
sum of per-chunk kf^T v). Same semantics, shift and padding rules as `naive.py`.

GQA is computed group-wise: queries are viewed as (B, Hkv, Rk, Rq, T, D), keys and values
broadcast over the group, so repeated K/V are never materialised.
"""

import torch
import torch.nn.functional as F


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
    C = max(chunk_size, window)
    N = -(-T // C)
    dev = q.device

    # (B, G, Rk, Rq, N, C, E) for the query side, broadcastable (B, G, 1|Rk, 1, N, C, E) for keys.
    qc = _chunk(q.float().view(B, Hkv, Rk, Rq, T, D), N, C)
    qfc = _chunk(qf.float().view(B, Hkv, Rk, Rq, T, Fdim), N, C)
    kc = _chunk(k.float().view(B, Hkv, 1, 1, T, D), N, C)
    vc = _chunk(v.float().view(B, Hkv, 1, 1, T, D), N, C)
    kfc = _chunk(kf.float().view(B, Hkv, Rk, 1, T, Fdim), N, C)
    valid = torch.zeros(B, N * C, dtype=torch.bool, device=dev)
    valid[:, :T] = True if key_valid is None else key_valid.bool()
    valid = valid.view(B, 1, 1, 1, N, 1, C)
    kfc = kfc * valid.transpose(-1, -2)  # invalid keys add nothing to the linear terms

    b = torch.arange(C, device=dev)[:, None]  # query offset in its chunk
    a = torch.arange(C, device=dev)[None, :]  # key offset in its chunk
    win_cur = (a <= b) & (a > b - window) & valid
    win_prev = (a > b + C - window) & _previous(valid, 4)

    s_cur = (scale * qc @ kc.transpose(-1, -2)).masked_fill(~win_cur, float("-inf"))
    s_prev = (scale * qc @ _previous(kc, 4).transpose(-1, -2)).masked_fill(~win_prev, float("-inf"))
    c = torch.maximum(s_cur.detach().amax(-1, keepdim=True), s_prev.detach().amax(-1, keepdim=True))
    c = c.clamp_min(0.0)  # the output does not depend on c; it only bounds the exponentials
    g = gamma.float().view(1, Hkv, Rk, Rq, 1, 1, 1)
    w_cur, w_prev = g * torch.exp(s_cur - c), g * torch.exp(s_prev - c)

    v_prev = _previous(vc, 4)
    num = w_cur @ vc + w_prev @ v_prev
    den = w_cur.sum(-1, keepdim=True) + w_prev.sum(-1, keepdim=True)
    if linear:
        e = torch.exp(-c)
        lin_cur = (qfc @ kfc.transpose(-1, -2)) * (a <= b - window)
        lin_prev = (qfc @ _previous(kfc, 4).transpose(-1, -2)) * (a <= b + C - window)
        # State of chunks <= n-2: inclusive cumulative sum shifted by two chunks.
        kv = _previous(_previous((kfc.transpose(-1, -2) @ vc).cumsum(4), 4), 4)
        ksum = _previous(_previous(kfc.sum(-2, keepdim=True).cumsum(4), 4), 4)
        num = num + e * (lin_cur @ vc + lin_prev @ v_prev + qfc @ kv)
        den = den + e * (
            lin_cur.sum(-1, keepdim=True)
            + lin_prev.sum(-1, keepdim=True)
            + (qfc * ksum).sum(-1, keepdim=True)
        )
    y = num / torch.where(den > 0, den, 1.0)
    return y.flatten(4, 5)[..., :T, :].reshape(B, H, T, D).to(q.dtype)
