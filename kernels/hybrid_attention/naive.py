"""O(T^2) reference of the hybrid attention. Ground truth for every faster path; tests only.

Notation (DESIGN.md section 1). For query position i of head h:

    s_ij = scale * q_i . k_j                              softmax score
    W(i) = { j : i - w < j <= i }                         sliding window (empty when w == 0)
    L(i) = { j : j <= i - w }                             linear part (empty when linear=False)
    c_i  = max(0, max_{j in W(i)} s_ij)                   one shift for both terms
    y_i  = (gamma_h sum_W e^{s_ij - c_i} v_j + e^{-c_i} sum_L (qf_i . kf_j) v_j)
         / (gamma_h sum_W e^{s_ij - c_i}     + e^{-c_i} sum_L (qf_i . kf_j))

Because the same e^{-c_i} multiplies numerator and denominator this equals the unshifted
formula exactly; the shift only keeps every exponential <= 1. Keys marked invalid
(`key_valid`, e.g. left padding) take part in neither term; a query with no valid key at all
(a padding position) gets y_i = 0.

Heads: q and qf have H heads; k and v have Hkv heads and kf has Hk heads, where Hkv and Hk
divide H. Query head h reads k, v from head h // (H // Hkv) and kf from h // (H // Hk).
"""

import torch


def expand_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, Hx, ...) -> (B, num_heads, ...), repeating each head num_heads / Hx times (GQA)."""
    reps = num_heads // x.shape[1]
    return x if reps == 1 else x.repeat_interleave(reps, dim=1)


def _scores(q, k, qf, kf, gamma, window, linear, scale, key_valid, rows):
    """Unnormalised weights (B, H, R, T) and their row sums (B, H, R, 1), fp32."""
    B, H, R, D = q.shape
    T = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    kk, kkf = (expand_heads(x.float(), H) for x in (k, kf))
    i = (torch.arange(T, device=q.device) if rows is None else rows.to(q.device))[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    in_window = (j <= i) & (j > i - window)
    in_linear = (j <= i - window) if linear else torch.zeros_like(in_window)
    valid = torch.ones(B, 1, 1, T, dtype=torch.bool, device=q.device)
    if key_valid is not None:
        valid = key_valid[:, None, None, :].bool()
    in_window, in_linear = in_window & valid, in_linear & valid

    s = (scale * q.float() @ kk.transpose(-1, -2)).masked_fill(~in_window, float("-inf"))
    c = s.detach().amax(-1, keepdim=True).clamp_min(0.0)  # the result does not depend on c
    a = gamma.float()[None, :, None, None] * torch.exp(s - c)
    b = (qf.float() @ kkf.transpose(-1, -2)).masked_fill(~in_linear, 0.0) * torch.exp(-c)
    weights = a + b
    return weights, weights.sum(-1, keepdim=True)


def hybrid_attention_weights_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    qf: torch.Tensor,
    kf: torch.Tensor,
    gamma: torch.Tensor,
    window: int,
    linear: bool = True,
    scale: float | None = None,
    key_valid: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The hybrid attention's weights over the keys, in fp32 (each row sums to 1, or is all zero
    for a query with no valid key).

    Args:
        q: (B, H, R, D) queries after RoPE at positions `rows`; qf: (B, H, R, F) their features.
        k: (B, Hkv, T, D) keys after RoPE; kf: (B, Hk, T, F) their features.
        gamma, window, linear, scale, key_valid: as `hybrid_attention_naive`.
        rows: (R,) query positions, default 0..T-1 (R = T).
    Returns:
        (B, H, R, T) fp32.
    """
    weights, den = _scores(q, k, qf, kf, gamma, window, linear, scale, key_valid, rows)
    return weights / torch.where(den > 0, den, 1.0)


def hybrid_attention_naive(
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
) -> torch.Tensor:
    """Hybrid attention by materialising the full T x T weight matrix, in fp32.

    Args:
        q: (B, H, T, D) queries after RoPE.
        k, v: (B, Hkv, T, D) keys (after RoPE) and values.
        qf: (B, H, T, F) query features phi_q(q).
        kf: (B, Hk, T, F) key features phi_k(k).
        gamma: (H,) softmax-term weight per head, in (0, 1).
        window: w >= 0, tokens in the sliding window (0: pure linear attention).
        linear: include the linear term over tokens older than the window.
        scale: softmax temperature, default D ** -0.5.
        key_valid: (B, T) bool, False for keys to ignore (padding).
    Returns:
        (B, H, T, D) in the dtype of q.
    """
    weights, den = _scores(q, k, qf, kf, gamma, window, linear, scale, key_valid, None)
    y = (weights @ expand_heads(v.float(), q.shape[1])) / torch.where(den > 0, den, 1.0)
    return y.to(q.dtype)
