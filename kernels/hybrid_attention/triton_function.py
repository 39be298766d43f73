"""Autograd entry point of the Triton hybrid attention (same API as `naive.py`)."""

import torch
import triton

from .triton_bwd import BackwardLaunch, attention_bwd, dkv_split_for
from .triton_fwd import SINK_TILE, attention_fwd
from .triton_state import state_bwd, state_fwd
from .triton_varlen import VarlenChunks, prepare_chunks


def default_chunk(D: int, F: int, element_size: int) -> int:
    """Query/key block length BT: 64 for 16-bit inputs with D, F <= 128, halved for fp32 and
    again for dimensions above 128, so that the backward tiles fit in shared memory (fp32 at
    D = F = 128 with BT = 64 needs 228 KiB, over the H100's 227 KiB)."""
    chunk = 64 // max(1, element_size // 2)
    return max(16, chunk // 2 if max(D, F) > 128 else chunk)


def window_blocks(window: int, chunk: int) -> int:
    """delta = ceil((w - 1) / BT): earlier key blocks a query block's window reaches."""
    return max(0, triton.cdiv(window - 1, chunk))


def sink_layout(sinks: int, B: int, T: int, key_valid: torch.Tensor | None, varlen: VarlenChunks | None,
                device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Where the sink keys are: (sink_pos, sink_index).

    sink_pos: (B, SINK_TILE) int32 positions of each row's first `sinks` valid keys, -1 for none,
    with key_valid only (otherwise the kernels take the first positions of each row or packed
    sequence). sink_index: (B or number of sequences, sinks) int64 flat index into (B * T) of each
    sink key, -1 for none (the backward adds the sink tile's dk, dv there). No host sync.
    """
    slots = torch.arange(sinks, device=device)
    if varlen is not None:
        cu = varlen.cu_seqlens.long()
        return None, torch.where(slots[None, :] < cu.diff()[:, None], cu[:-1, None] + slots[None, :], -1)
    rows = T * torch.arange(B, device=device)[:, None]
    if key_valid is None:
        return None, torch.where(slots < T, slots + rows, -1)
    valid = key_valid.bool()
    t = torch.arange(T, device=device)
    is_sink = valid & (valid.long().cumsum(-1) <= sinks)
    pos = torch.where(is_sink, t, T).sort(-1).values[:, :sinks]
    pos = torch.where(pos < T, pos, -1)
    pos = torch.cat([pos, pos.new_full((B, SINK_TILE - pos.shape[1]), -1)], 1)
    index = torch.where(pos[:, :sinks] >= 0, pos[:, :sinks] + rows, -1)
    return pos.to(torch.int32).contiguous(), index


class HybridAttentionFunction(torch.autograd.Function):
    """Fused hybrid attention; saves the inputs, the output, three fp32 numbers per row and the
    forward's prefix states h, z (one F x D state per block: the backward reads them instead of
    recomputing them). `varlen` (a `VarlenChunks` or None) holds integer index tensors only."""

    @staticmethod
    def forward(ctx, q, k, v, qf, kf, gamma, window, linear, scale, key_valid, chunk, varlen, sinks, sink_bias,
                log_gate, launch):
        q, k, v, qf, kf = (x.contiguous() for x in (q, k, v, qf, kf))
        g = gamma.detach().float().contiguous()
        valid = None if key_valid is None else key_valid.to(torch.int8).contiguous()
        delta = window_blocks(window, chunk)
        B, T = q.shape[0], q.shape[2]
        sink_pos = sink_index = bias = None
        if sinks:
            sink_pos, sink_index = sink_layout(sinks, B, T, key_valid, varlen, q.device)
            if sink_bias is not None:
                bias = sink_bias.detach().float().contiguous()
        lg = log_gate.detach().float().contiguous() if log_gate is not None and linear else None
        sink_kw = dict(sinks=sinks, sink_pos=sink_pos)
        h, z = state_fwd(kf, v, valid, k.shape[1], delta, chunk, varlen, log_gate=lg, **sink_kw) if linear else (q, q)
        o, cs, inv_den, lin_e = attention_fwd(q, k, v, qf, kf, g, h, z, valid, window, linear, scale, delta, chunk,
                                              varlen, sink_bias=bias, log_gate=lg, **sink_kw)
        ctx.save_for_backward(q, k, v, qf, kf, g, valid, o, cs, inv_den, lin_e, h, z, sink_pos, sink_index, bias, lg)
        ctx.cfg = (window, linear, scale, delta, chunk, gamma.dtype, varlen, sinks,
                   None if sink_bias is None else sink_bias.dtype, None if log_gate is None else log_gate.dtype,
                   launch)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, qf, kf, g, valid, o, cs, inv_den, lin_e, h, z, sink_pos, sink_index, bias, lg = ctx.saved_tensors
        window, linear, scale, delta, chunk, gamma_dtype, varlen, sinks, bias_dtype, gate_dtype, launch = ctx.cfg
        do = do.contiguous()

        def reverse_states(delta_rows):
            if not linear:
                return q, q
            return state_bwd(qf, do, lin_e, inv_den, delta_rows, kf.shape[1], delta, chunk, varlen, log_gate=lg)

        dq, dk, dv, dqf, dkf, dg, dbias, dG = attention_bwd(
            q, k, v, qf, kf, g, h, z, o, do, cs, inv_den, lin_e, valid, reverse_states,
            window, linear, scale, delta, chunk, varlen,
            dq_launch=launch.dq, dkv_launch=launch.dkv, dkv_split=launch.dkv_split,
            sinks=sinks, sink_pos=sink_pos, sink_bias=bias, sink_index=sink_index, log_gate=lg,
        )
        if not linear:  # gamma cancels between numerator and denominator: its gradient is exactly 0
            dg = torch.zeros_like(dg)
        if bias_dtype is not None:  # no sinks: the bias reaches no key
            dbias = (torch.zeros_like(g) if dbias is None else dbias).to(bias_dtype)
        dlog_gate = None
        if gate_dtype is not None:  # G_t = sum_{u <= t} log g_u: d log g_u = sum_{t >= u} dG_t
            dlog_gate = (torch.zeros(kf.shape[:3], dtype=gate_dtype, device=kf.device) if dG is None
                         else reverse_cumsum(dG, varlen).to(gate_dtype))
        return (dq, dk, dv, dqf, dkf, dg.to(gamma_dtype), None, None, None, None, None, None, None, dbias,
                dlog_gate, None)


def reverse_cumsum(x: torch.Tensor, varlen: VarlenChunks | None) -> torch.Tensor:
    """sum_{t' >= t} x[..., t'] along the last axis, within each packed sequence when varlen."""
    rev = x.flip(-1).cumsum(-1).flip(-1)
    if varlen is None:
        return rev
    cu = varlen.cu_seqlens.long()
    T = x.shape[-1]
    end = torch.repeat_interleave(cu[1:], cu.diff(), output_size=T)  # each token's sequence end
    return rev - torch.nn.functional.pad(rev, (0, 1))[..., end]


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
    *,
    sinks: int = 0,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
    backward_launch: BackwardLaunch | None = None,
) -> torch.Tensor:
    """Hybrid attention through the fused Triton kernels; arguments as `hybrid_attention_naive`.

    Shapes: q (B, H, T, D), k, v (B, Hkv, T, D), qf (B, H, T, F), kf (B, Hk, T, F) with
    Hkv | Hk | H; D, F <= 256; q, k, v of one dtype and qf, kf of one dtype (fp16, bf16 or
    fp32). `dispatch.hybrid_attention` checks these and falls back otherwise.

    Args:
        chunk_size: block length BT (a power of two >= 16), default `default_chunk`.
        cu_seqlens: (S + 1,) int offsets of sequences packed along T (B = 1, key_valid None):
            each attends only to itself. None: every row is one sequence.
        sinks: the first `sinks` (<= 16) valid keys of each row (of each packed sequence) stay in
            the softmax term; sink_bias: (H,) logit added to their scores, or None.
        log_gate: (B, Hk, T) log of the linear state's decay (<= 0), or None; packed sequences
            each decay from their own start.
        backward_launch: launch settings of the backward kernels (`BackwardLaunch`); None, or
            a field left None, takes the shape-keyed defaults.
    Returns:
        (B, H, T, D) in q's dtype.
    """
    D, F = q.shape[-1], qf.shape[-1]
    scale = D**-0.5 if scale is None else scale
    chunk = chunk_size or default_chunk(D, F, max(q.element_size(), qf.element_size()))
    if q.shape[2] == 0:
        return torch.empty_like(q)
    if not 0 <= sinks <= SINK_TILE:
        raise ValueError(f"the kernels take 0 to {SINK_TILE} sinks (got {sinks})")
    varlen = None
    if cu_seqlens is not None:
        if q.shape[0] != 1 or key_valid is not None:
            raise ValueError("cu_seqlens needs a batch of one and no key_valid")
        varlen = prepare_chunks(cu_seqlens, chunk, q.shape[2])
    launch = backward_launch or BackwardLaunch()
    dkv_split_for(chunk, launch.dkv_split)  # a bad split fails here, not in the backward
    return HybridAttentionFunction.apply(q, k, v, qf, kf, gamma, int(window), bool(linear), float(scale),
                                         key_valid, chunk, varlen, int(sinks), sink_bias, log_gate, launch)
