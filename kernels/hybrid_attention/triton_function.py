"""Autograd entry point of the Triton hybrid attention (same API as `naive.py`)."""

import torch
import triton

from .triton_bwd import attention_bwd
from .triton_fwd import attention_fwd
from .triton_state import state_bwd, state_fwd
from .triton_varlen import prepare_chunks


def default_chunk(D: int, F: int, element_size: int) -> int:
    """Query/key block length BT: 64 for 16-bit inputs with D, F <= 128, halved for fp32 and
    again for dimensions above 128, so that the backward tiles fit in shared memory (fp32 at
    D = F = 128 with BT = 64 needs 228 KiB, over the H100's 227 KiB)."""
    chunk = 64 // max(1, element_size // 2)
    return max(16, chunk // 2 if max(D, F) > 128 else chunk)


def window_blocks(window: int, chunk: int) -> int:
    """delta = ceil((w - 1) / BT): earlier key blocks a query block's window reaches."""
    return max(0, triton.cdiv(window - 1, chunk))


class HybridAttentionFunction(torch.autograd.Function):
    """Fused hybrid attention; saves the inputs, the output, three fp32 numbers per row and the
    forward's prefix states h, z (one F x D state per block: the backward reads them instead of
    recomputing them). `varlen` (a `VarlenChunks` or None) holds integer index tensors only."""

    @staticmethod
    def forward(ctx, q, k, v, qf, kf, gamma, window, linear, scale, key_valid, chunk, varlen):
        q, k, v, qf, kf = (x.contiguous() for x in (q, k, v, qf, kf))
        g = gamma.detach().float().contiguous()
        valid = None if key_valid is None else key_valid.to(torch.int8).contiguous()
        delta = window_blocks(window, chunk)
        h, z = state_fwd(kf, v, valid, k.shape[1], delta, chunk, varlen) if linear else (q, q)
        o, cs, inv_den, lin_e = attention_fwd(q, k, v, qf, kf, g, h, z, valid, window, linear, scale, delta, chunk,
                                       varlen)
        ctx.save_for_backward(q, k, v, qf, kf, g, valid, o, cs, inv_den, lin_e, h, z)
        ctx.cfg = (window, linear, scale, delta, chunk, gamma.dtype, varlen)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, qf, kf, g, valid, o, cs, inv_den, lin_e, h, z = ctx.saved_tensors
        window, linear, scale, delta, chunk, gamma_dtype, varlen = ctx.cfg
        do = do.contiguous()

        def reverse_states(delta_rows):
            if not linear:
                return q, q
            return state_bwd(qf, do, lin_e, inv_den, delta_rows, kf.shape[1], delta, chunk, varlen)

        dq, dk, dv, dqf, dkf, dg = attention_bwd(
            q, k, v, qf, kf, g, h, z, o, do, cs, inv_den, lin_e, valid, reverse_states,
            window, linear, scale, delta, chunk, varlen,
        )
        if not linear:  # gamma cancels between numerator and denominator: its gradient is exactly 0
            dg = torch.zeros_like(dg)
        return dq, dk, dv, dqf, dkf, dg.to(gamma_dtype), None, None, None, None, None, None


def hybrid_attention_triton(
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
    chunk_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hybrid attention through the fused Triton kernels; arguments as `hybrid_attention_naive`.

    Shapes: q (B, H, T, D), k, v (B, Hkv, T, D), qf (B, H, T, F), kf (B, Hk, T, F) with
    Hkv | Hk | H; D, F <= 256; q, k, v of one dtype and qf, kf of one dtype (fp16, bf16 or
    fp32). `dispatch.hybrid_attention` checks these and falls back otherwise.

    Args:
        chunk_size: block length BT (a power of two >= 16), default `default_chunk`.
        cu_seqlens: (S + 1,) int offsets of sequences packed along T (B = 1, key_valid None):
            each attends only to itself. None: every row is one sequence.
    Returns:
        (B, H, T, D) in q's dtype.
    """
    D, F = q.shape[-1], qf.shape[-1]
    scale = D**-0.5 if scale is None else scale
    chunk = chunk_size or default_chunk(D, F, max(q.element_size(), qf.element_size()))
    if q.shape[2] == 0:
        return torch.empty_like(q)
    varlen = None
    if cu_seqlens is not None:
        if q.shape[0] != 1 or key_valid is not None:
            raise ValueError("cu_seqlens needs a batch of one and no key_valid")
        varlen = prepare_chunks(cu_seqlens, chunk, q.shape[2])
    return HybridAttentionFunction.apply(q, k, v, qf, kf, gamma, int(window), bool(linear), float(scale),
                                         key_valid, chunk, varlen)
