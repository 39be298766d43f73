"""Hybrid attention over variable-length sequences packed into one row (`cu_seqlens`).

Kernel path (CUDA, or `LOLCATS_FORCE_TRITON=1`): the Triton kernels work on the packed row
directly, cutting each sequence into its own blocks (`hybrid_attention/triton_varlen.py`), so
the cost is that of the packed length. PyTorch path (CPU, and inputs the kernels do not take,
with one warning as in `dispatch.py`): the packed tokens are scattered into a right-padded batch
(padding keys masked out through `key_valid`), run through `hybrid_attention_chunked`, and
gathered back, paying the padding of each sequence up to the longest one. Both are exact — every
sequence sees only its own keys — and differentiable.
"""

import torch

from .dispatch import _attention_reason, _extras_reason, _wants_triton, _warn_once
from .hybrid_attention.chunked import hybrid_attention_chunked


def _pad(x: torch.Tensor, index: torch.Tensor, num: int, max_len: int) -> torch.Tensor:
    """(1, Hx, Ttot, E) -> (num, Hx, max_len, E), token t of the packed row to slot index[t]."""
    _, Hx, _, E = x.shape
    out = x.new_zeros(num * max_len, Hx, E)
    out = out.index_copy(0, index, x[0].transpose(0, 1))
    return out.view(num, max_len, Hx, E).transpose(1, 2)


def _padded(q, k, v, qf, kf, gamma, window, cu_seqlens, linear, scale, sinks, sink_bias, log_gate) -> torch.Tensor:
    """The PyTorch path: through a right-padded batch of the sequences."""
    lengths = cu_seqlens.diff().tolist()
    num, max_len, total = len(lengths), max(lengths, default=0), q.shape[2]
    if total == 0 or max_len == 0:
        return torch.zeros_like(q)
    dev = q.device
    seq = torch.repeat_interleave(torch.arange(num, device=dev), torch.tensor(lengths, device=dev))
    offset = torch.arange(total, device=dev) - cu_seqlens.to(dev)[seq]
    index = seq * max_len + offset
    key_valid = torch.zeros(num * max_len, dtype=torch.bool, device=dev)
    key_valid[index] = True
    padded = [_pad(x, index, num, max_len) for x in (q, k, v, qf, kf)]
    if log_gate is not None:
        log_gate = _pad(log_gate[..., None], index, num, max_len)[..., 0]
    y = hybrid_attention_chunked(*padded, gamma, window, linear, scale, key_valid.view(num, max_len),
                                 sinks=sinks, sink_bias=sink_bias, log_gate=log_gate)
    y = y.transpose(1, 2).reshape(num * max_len, q.shape[1], q.shape[3])[index]
    return y.transpose(0, 1).unsqueeze(0)


def hybrid_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qf: torch.Tensor,
    kf: torch.Tensor,
    gamma: torch.Tensor,
    window: int,
    cu_seqlens: torch.Tensor,
    linear: bool = True,
    scale: float | None = None,
    *,
    sinks: int = 0,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hybrid attention of packed sequences, each attending only to itself (and to its own
    first `sinks` tokens).

    Args:
        q: (1, H, Ttot, D), k, v: (1, Hkv, Ttot, D), qf: (1, H, Ttot, F), kf: (1, Hk, Ttot, F):
            the sequences concatenated along time.
        gamma, window, linear, scale, sinks, sink_bias: as `hybrid_attention_naive`.
        log_gate: (1, Hk, Ttot) or None, each sequence's decay starting afresh.
        cu_seqlens: (S + 1,) int, cumulative lengths starting at 0 and ending at Ttot.
    Returns:
        (1, H, Ttot, D) in q's dtype.
    """
    if _wants_triton(q):
        reason = _attention_reason(q, k, v, qf, kf) or _extras_reason(sinks, log_gate)
        if reason is None:
            from .hybrid_attention.triton_function import hybrid_attention_triton

            return hybrid_attention_triton(q, k, v, qf, kf, gamma, window, linear, scale,
                                           cu_seqlens=cu_seqlens.to(q.device), sinks=sinks, sink_bias=sink_bias,
                                           log_gate=log_gate)
        _warn_once(reason)
    return _padded(q, k, v, qf, kf, gamma, window, cu_seqlens, linear, scale, sinks, sink_bias, log_gate)
