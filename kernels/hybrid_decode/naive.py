"""Reference of one decoding step of the hybrid attention, in plain PyTorch.

The per-layer decode state of a batch (all tensors updated in place):

    win_k, win_v: (B, Hkv, w, D)  ring buffer of the last w raw keys/values; the token at
                                  absolute position p lives in slot p % w
    win_valid:    (B, w) bool     slot holds a real (non-padding) token
    S:            (B, Hk, F, D)   fp32, sum over folded keys of d_j kf_j v_j^T
    z:            (B, Hk, F)      fp32, sum over folded keys of d_j kf_j

and, with attention sinks (`SinkState`) or a gate (`log_gate`, `win_decay`):

    win_sink:     (B, w) bool     slot holds one of the row's first `sinks` valid tokens
    sink_k/v:     (B, Hkv, s, D)  sink keys/values that have left the window, in order
    sink_valid:   (B, s) bool     sink slot filled
    seen_valid:   (B,) long       valid tokens written so far (the next ones below s are sinks)
    win_decay:    (B, Hk, w) fp32 log-decay each window slot has accumulated since written

Step for the token at position p (DESIGN.md sections 1 and 6, same shift c as the parallel
form): the state decays by the new token's gate, S <- g_p S; the key in slot p % w (position
p - w) leaves the window and is folded into (S, z) with the decay it accumulated in the window
(exp(win_decay)), or, if it is a sink, moves to the sink buffer; the new key/value take its
slot; then the query attends over the window (positions p-w+1..p), the sinks that left the
window, and the state (positions <= p-w). With w == 0 the new key is folded before attending.
"""

from typing import NamedTuple

import torch

from ..hybrid_attention.naive import expand_heads, stabiliser


class SinkState(NamedTuple):
    """Decode state of the attention sinks (module docstring); updated in place."""

    win_sink: torch.Tensor
    sink_k: torch.Tensor
    sink_v: torch.Tensor
    sink_valid: torch.Tensor
    seen_valid: torch.Tensor

    @property
    def sinks(self) -> int:
        return self.sink_k.shape[2]


def _move_to_sinks(sk: SinkState, key: torch.Tensor, value: torch.Tensor, is_sink: torch.Tensor) -> None:
    """Append key/value (B, Hkv, D) to the sink buffer of the rows where is_sink (B,)."""
    rows = is_sink.nonzero()[:, 0]
    if rows.numel():
        slot = sk.sink_valid[rows].sum(-1)
        sk.sink_k[rows, :, slot] = key[rows]
        sk.sink_v[rows, :, slot] = value[rows]
        sk.sink_valid[rows, slot] = True


def hybrid_decode_step_naive(
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
    pos: int,
    valid: torch.Tensor,
    linear: bool = True,
    scale: float | None = None,
    *,
    sink_state: SinkState | None = None,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
    win_decay: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decoding step for a batch; updates the state in place.

    Args:
        q: (B, H, D) query of the new token (after RoPE).
        k, v: (B, Hkv, D) key (after RoPE) and value of the new token.
        qf: (B, H, F) query features.
        kf_fold: (B, Hk, F) features of the key folded into the state at this step: the key
            leaving the window (zeros if its slot is empty or padding), or the new key when
            the window is 0. A sink's features are ignored here (sinks are never folded).
        gamma: (H,) softmax-term weight per head.
        win_k, win_v, win_valid, S, z: the decode state (module docstring); w = win_k.shape[2].
        pos: absolute position of the new token.
        valid: (B,) bool, False where the new token is padding.
        linear: include the state term.
        sink_state: the sinks' state, or None for no sinks.
        sink_bias: (H,) logit added to the sink keys' scores, or None.
        log_gate: (B, Hk) log of the new token's decay g_p, or None (no decay).
        win_decay: (B, Hk, w) the window slots' accumulated log-decay (with log_gate and w > 0).
    Returns:
        (B, H, D) in the dtype of q.
    """
    B, H, D = q.shape
    w = win_k.shape[2]
    scale = D**-0.5 if scale is None else scale
    slot = pos % w if w else 0
    new_sink = None
    if sink_state is not None:
        new_sink = valid & (sink_state.seen_valid < sink_state.sinks)
        sink_state.seen_valid.add_(valid.long())
    if w > 0:
        leaving_k, leaving_v = win_k[:, :, slot].clone(), win_v[:, :, slot].clone()
        leaving_sink = None if sink_state is None else sink_state.win_sink[:, slot] & win_valid[:, slot]
    else:
        leaving_k, leaving_v, leaving_sink = k, v, new_sink
    if leaving_sink is not None:
        _move_to_sinks(sink_state, leaving_k, leaving_v, leaving_sink)
        kf_fold = kf_fold * ~leaving_sink[:, None, None]
    if linear:
        decay = 1.0
        if log_gate is not None:
            g = log_gate.float().exp()
            S *= g[..., None, None]
            z *= g[..., None]
            if w > 0:
                win_decay += log_gate.float()[..., None]
                decay = win_decay[..., slot].exp()[..., None]
        fold_v = expand_heads(leaving_v.float(), S.shape[1])
        fold_kf = kf_fold.float() * decay
        S += fold_kf[..., :, None] * fold_v[..., None, :]
        z += fold_kf

    scores, values = [], []
    if w > 0:
        win_k[:, :, slot] = k
        win_v[:, :, slot] = v
        win_valid[:, slot] = valid
        if win_decay is not None:
            win_decay[..., slot] = 0.0
        s = scale * torch.einsum("bhd,bhwd->bhw", q.float(), expand_heads(win_k.float(), H))
        if sink_state is not None:
            sink_state.win_sink[:, slot] = new_sink
            if sink_bias is not None:
                s = s + sink_state.win_sink[:, None, :] * sink_bias.float()[None, :, None]
        scores.append(s.masked_fill(~win_valid[:, None, :], float("-inf")))
        values.append(expand_heads(win_v.float(), H))
    if sink_state is not None:
        s = scale * torch.einsum("bhd,bhsd->bhs", q.float(), expand_heads(sink_state.sink_k.float(), H))
        if sink_bias is not None:
            s = s + sink_bias.float()[None, :, None]
        scores.append(s.masked_fill(~sink_state.sink_valid[:, None, :], float("-inf")))
        values.append(expand_heads(sink_state.sink_v.float(), H))
    if scores:
        s, vv = torch.cat(scores, -1), torch.cat(values, 2)
        m = s.amax(-1, keepdim=True)
    else:
        m = torch.full((B, H, 1), float("-inf"), device=q.device)
    lin_num = torch.zeros(B, H, D, dtype=torch.float32, device=q.device)
    lin_den = torch.zeros(B, H, 1, dtype=torch.float32, device=q.device)
    if linear:
        lin_num = torch.einsum("bhf,bhfd->bhd", qf.float(), expand_heads(S, H))
        lin_den = torch.einsum("bhf,bhf->bh", qf.float(), expand_heads(z, H))[..., None]
    c, e, null = stabiliser(m, lin_den)
    num, den = e * lin_num, e * lin_den + null
    if scores:
        a = gamma.float()[None, :, None] * torch.exp(s - c)
        num = num + torch.einsum("bhw,bhwd->bhd", a, vv)
        den = den + a.sum(-1, keepdim=True)
    return (num / torch.where(den > 0, den, 1.0)).to(q.dtype)
