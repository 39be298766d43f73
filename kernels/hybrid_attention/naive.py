"""O(T^2) reference of the hybrid attention. Ground truth for every faster path; tests only.

Notation (DESIGN.md sections 1 and 6). For query position i of head h:

    s_ij = scale * q_i . k_j  (+ sink_bias_h for a sink key)       softmax score
    W(i) = { j : i - w < j <= i }                                  sliding window
    S(i) = { j <= i - w : j is one of the first `sinks` keys }     attention sinks
    L(i) = { j <= i - w } minus S(i)                               linear part (if linear)
    d_ij = exp(G_i - G_j), G_t = sum_{u <= t} log g_u              decay (1 without a gate)
    l_ij = (qf_i . kf_j) d_ij                                      linear weight
    l_i  = sum_{L(i)} l_ij                                           linear sum
    n_i  = e^LOG_FLOOR if l_i > 0 else 0                             null key
    c_i  = max(max_{j in W(i) u S(i)} s_ij, log l_i, log n_i)        one shift for all
    y_i  = (gamma_h sum_{W u S} e^{s_ij - c_i} v_j + e^{-c_i} sum_L l_ij v_j)
         / (gamma_h sum_{W u S} e^{s_ij - c_i}     + e^{-c_i} l_i + e^{-c_i} n_i)

A row with linear mass also attends to a null key of weight e^LOG_FLOOR (LOG_FLOOR = -20) and
value 0. The same e^{-c_i} multiplies numerator and denominator, so the output equals the
unshifted formula exactly; the shift keeps every exponential and the linear sum <= 1 and makes
the largest term 1, however negative the scores (Qwen2's heads put scores of -100 and below on
every recent key, and a few rows score below -300 on every key). The null key matters only in
a row whose keys' total unnormalised weight is near e^-20 or below while its linear part is
not empty (every score very negative and a vanishing linear sum, as from features peaked on
disjoint dimensions): such a row fades to 0 instead of dividing by a vanishing sum, whose
gradient (1 / sum, reaching the features) overflows fp32. Rows with softmax keys only are exact
softmax attention at any score. A feature map with non-negative features (all registered ones)
keeps l_ij >= 0.

Keys marked invalid (`key_valid`, e.g. left padding) take part in no term and do not count
towards the sinks: the sinks are the first `sinks` valid keys of each row. A query with no
valid key at all (a padding position) gets y_i = 0. The gate decays the linear state: a key
leaving the window enters the state with the decay it has accumulated since it was written,
so with log_gate the linear part is the decayed linear attention over the old keys.

Heads: q and qf have H heads; k and v have Hkv heads, kf and log_gate have Hk heads, where Hkv
and Hk divide H. Query head h reads k, v from head h // (H // Hkv) and kf, log_gate from
h // (H // Hk).
"""

import torch


def expand_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, Hx, ...) -> (B, num_heads, ...), repeating each head num_heads / Hx times (GQA)."""
    reps = num_heads // x.shape[1]
    return x if reps == 1 else x.repeat_interleave(reps, dim=1)


def sink_keys(key_valid: torch.Tensor, sinks: int) -> torch.Tensor:
    """(B, T) bool: the first `sinks` valid keys of each row."""
    return key_valid & (key_valid.long().cumsum(-1) <= sinks)


# Log-weight of the null key of a row with linear mass (module docstring): such a row's shift
# is >= LOG_FLOOR, so its linear factor e^{-c} <= e^20 and its denominator >= min(1, gamma).
LOG_FLOOR = -20.0


def stabiliser(m: torch.Tensor, lin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shift c, the linear term's factor e^{-c} and the null key's shifted weight
    e^{LOG_FLOOR - c} (both 0 where the linear sum is 0), all detached.

    m: the softmax scores' max (-inf where no softmax key); lin: the unshifted linear sum >= 0
    (0 where no linear key), same shape. c = max(m, log lin, LOG_FLOOR) where lin > 0, else m
    (0 for a row with no key at all, so that exponentials stay defined).
    """
    m, lin = m.detach(), lin.detach()
    has_lin = lin > 0
    c = torch.where(has_lin, torch.maximum(m, torch.log(lin)).clamp_min(LOG_FLOOR), m)
    c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
    zero = torch.zeros_like(c)
    return c, torch.where(has_lin, torch.exp(-c), zero), torch.where(has_lin, torch.exp(LOG_FLOOR - c), zero)


def _scores(q, k, qf, kf, gamma, window, linear, scale, key_valid, rows, sinks, sink_bias, log_gate):
    """Unnormalised weights (B, H, R, T) and the denominators (B, H, R, 1): their row sums plus
    the null key's weight, fp32."""
    B, H, R, D = q.shape
    T = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    kk, kkf = (expand_heads(x.float(), H) for x in (k, kf))
    i = (torch.arange(T, device=q.device) if rows is None else rows.to(q.device))[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if key_valid is None else key_valid.bool()
    sink = sink_keys(valid, sinks)[:, None, None, :]
    valid = valid[:, None, None, :]
    in_window = (j <= i) & (j > i - window) & valid
    in_softmax = in_window | (sink & (j <= i))
    in_linear = (j <= i) & ~in_softmax & valid if linear else torch.zeros_like(in_window)

    s = scale * q.float() @ kk.transpose(-1, -2)
    if sink_bias is not None:
        s = s + sink * sink_bias.float()[None, :, None, None]
    s = s.masked_fill(~in_softmax, float("-inf"))
    lin = (qf.float() @ kkf.transpose(-1, -2)).masked_fill(~in_linear, 0.0)
    if log_gate is not None:
        G = expand_heads(log_gate.float(), H).cumsum(-1)  # (B, H, T)
        Gi = G if rows is None else G[:, :, rows.to(q.device)]
        lin = lin * torch.exp((Gi[..., :, None] - G[..., None, :]).clamp_max(0.0))
    c, e, null = stabiliser(s.amax(-1, keepdim=True), lin.sum(-1, keepdim=True))
    weights = gamma.float()[None, :, None, None] * torch.exp(s - c) + lin * e
    return weights, weights.sum(-1, keepdim=True) + null


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
    *,
    sinks: int = 0,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """The hybrid attention's weights over the keys, in fp32 (each row sums to 1 less the null
    key's share, or is all zero for a query with no valid key).

    Args:
        q: (B, H, R, D) queries after RoPE at positions `rows`; qf: (B, H, R, F) their features.
        k: (B, Hkv, T, D) keys after RoPE; kf: (B, Hk, T, F) their features.
        gamma, window, linear, scale, key_valid, sinks, sink_bias, log_gate: as
            `hybrid_attention_naive`.
        rows: (R,) query positions, default 0..T-1 (R = T).
    Returns:
        (B, H, R, T) fp32.
    """
    weights, den = _scores(q, k, qf, kf, gamma, window, linear, scale, key_valid, rows, sinks,
                           sink_bias, log_gate)
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
    *,
    sinks: int = 0,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hybrid attention by materialising the full T x T weight matrix, in fp32.

    Args:
        q: (B, H, T, D) queries after RoPE.
        k, v: (B, Hkv, T, D) keys (after RoPE) and values.
        qf: (B, H, T, F) query features phi_q(q).
        kf: (B, Hk, T, F) key features phi_k(k), non-negative.
        gamma: (H,) softmax-term weight per head, in (0, 1).
        window: w >= 0, tokens in the sliding window (0: pure linear attention).
        linear: include the linear term over tokens older than the window.
        scale: softmax temperature, default D ** -0.5.
        key_valid: (B, T) bool, False for keys to ignore (padding).
        sinks: the first `sinks` valid keys stay in the softmax term for every query.
        sink_bias: (H,) logit added to the sink keys' scores, or None.
        log_gate: (B, Hk, T) log of the linear state's decay g_t in (0, 1], or None (no decay).
    Returns:
        (B, H, T, D) in the dtype of q.
    """
    weights, den = _scores(q, k, qf, kf, gamma, window, linear, scale, key_valid, None, sinks,
                           sink_bias, log_gate)
    y = (weights @ expand_heads(v.float(), q.shape[1])) / torch.where(den > 0, den, 1.0)
    return y.to(q.dtype)
