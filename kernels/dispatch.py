"""Pick the Triton kernel or the PyTorch path for the hybrid-attention ops.

CUDA tensors go to the Triton kernels, CPU tensors to the PyTorch references
(`hybrid_attention_chunked`, `hybrid_decode_step_naive`). `LOLCATS_FORCE_TRITON=1` sends CPU
tensors to the kernels too (run them with `TRITON_INTERPRET=1`). Inputs the kernels do not
support take the PyTorch path with one warning per reason. Triton is imported only when a
kernel is about to run.
"""

import functools
import importlib.util
import os
import warnings

import torch

from .hybrid_attention.chunked import hybrid_attention_chunked
from .hybrid_decode.naive import SinkState, hybrid_decode_step_naive

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_DIM = 256
# A one-token prefill with one feature head for two query heads (T = 1, Hk = 1) hit an illegal
# memory access on an H100 that the interpreter's bounds checks do not reproduce. Triton
# compiles a separate variant for integer arguments equal to 1, so both T = 1 and Hk = 1 are
# suspects: until that is understood, sequences this short (where the kernel gains nothing)
# and a single feature head on CUDA take the PyTorch path.
_MIN_KERNEL_LEN = 16
# fp32 tiles above 128 wide do not fit a block's shared memory (227 KiB on an H100): with
# D = 256, F = 128 the dkv kernel needs 232 KiB, with D = F = 256 the forward 304 KiB (one
# F x D state tile) and dkv 368 KiB (sm_90 compile, Triton 3.7; Triton raises OutOfResources
# at launch).
_MAX_FP32_DIM = 128


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"lolcats_kernels: {reason}; using the PyTorch path", RuntimeWarning, stacklevel=3)


def _wants_triton(x: torch.Tensor) -> bool:
    """CUDA tensors take the kernels unless LOLCATS_KERNELS=torch; LOLCATS_FORCE_TRITON=1 forces them."""
    if os.environ.get("LOLCATS_KERNELS") == "torch":
        return False
    return x.is_cuda or os.environ.get("LOLCATS_FORCE_TRITON") == "1"


def _common_reason(q, k, kf, groups) -> str | None:
    """Why the kernels cannot take these inputs (None if they can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    for name, group in groups.items():
        dtypes = {x.dtype for x in group}
        if len(dtypes) > 1 or not dtypes <= set(_DTYPES):
            return f"{name} must share one dtype of fp16/bf16/fp32 (got {sorted(map(str, dtypes))})"
    if q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return "bf16 tl.dot is wrong in the Triton interpreter"
    H, Hkv, Hk = q.shape[1], k.shape[1], kf.shape[1]
    if H % Hk or Hk % Hkv:
        return f"heads must nest as Hkv | Hk | H (got H={H}, Hk={Hk}, Hkv={Hkv})"
    if q.shape[-1] > _MAX_DIM or kf.shape[-1] > _MAX_DIM:
        return f"head and feature dimensions above {_MAX_DIM} are not supported"
    return None


def _attention_reason(q, k, v, qf, kf) -> str | None:
    """Why the hybrid-attention kernels cannot take these inputs (None if they can); also
    used for packed sequences (`varlen.py`), where T is the packed length."""
    reason = _common_reason(q, k, kf, {"q, k, v": (q, k, v), "qf, kf": (qf, kf)})
    if (reason is None and max(q.element_size(), qf.element_size()) == 4
            and max(q.shape[-1], qf.shape[-1]) > _MAX_FP32_DIM):
        reason = f"fp32 head/feature dimensions above {_MAX_FP32_DIM} exceed the shared memory"
    if reason is None and q.shape[2] < _MIN_KERNEL_LEN:
        reason = f"sequences shorter than {_MIN_KERNEL_LEN} tokens run on the PyTorch path"
    if reason is None and q.is_cuda and kf.shape[1] == 1 < q.shape[1]:
        reason = "a single feature head (Hk = 1) is not yet validated on GPU"
    return reason


_MAX_SINKS = 16  # one tile of sink keys (hybrid_attention/triton_fwd.py SINK_TILE)


def _extras_reason(sinks: int, log_gate) -> str | None:
    """Why the attention kernels cannot take these attention sinks or this gate (None if they can)."""
    if sinks > _MAX_SINKS:
        return f"more than {_MAX_SINKS} attention sinks are not in the Triton kernels"
    if log_gate is not None and not log_gate.is_floating_point():
        return f"log_gate must be floating point (got {log_gate.dtype})"
    return None


def _decode_extras_reason(win_k, sink_state: SinkState | None, log_gate, win_decay) -> str | None:
    """Why the decode kernel cannot take this sink state or gate (None if it can)."""
    if sink_state is not None:
        win_sink, sink_k, sink_v, sink_valid, seen_valid = sink_state
        if win_sink.dtype != torch.bool or sink_valid.dtype != torch.bool or seen_valid.dtype != torch.int64:
            return "win_sink and sink_valid must be bool, seen_valid int64"
        if sink_k.dtype != win_k.dtype or sink_v.dtype != win_k.dtype:
            return "the sink buffer must have the window's dtype"
        if not all(x.is_contiguous() for x in sink_state):
            return "the decode state must be contiguous (it is updated in place)"
    if log_gate is not None and win_k.shape[2] > 0:
        if win_decay is None or win_decay.dtype != torch.float32 or not win_decay.is_contiguous():
            return "a gated decode step needs a contiguous fp32 win_decay"
    return None


def hybrid_attention(
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
    """Hybrid attention (training and prefill); arguments and result as
    `hybrid_attention_naive`: q (B, H, T, D), k, v (B, Hkv, T, D), qf (B, H, T, F),
    kf (B, Hk, T, F), gamma (H,), key_valid (B, T) bool or None, sink_bias (H,) or None,
    log_gate (B, Hk, T) or None -> (B, H, T, D)."""
    if _wants_triton(q):
        reason = _attention_reason(q, k, v, qf, kf) or _extras_reason(sinks, log_gate)
        if reason is None:
            from .hybrid_attention.triton_function import hybrid_attention_triton

            return hybrid_attention_triton(q, k, v, qf, kf, gamma, window, linear, scale, key_valid,
                                           sinks=sinks, sink_bias=sink_bias, log_gate=log_gate)
        _warn_once(reason)
    return hybrid_attention_chunked(q, k, v, qf, kf, gamma, window, linear, scale, key_valid,
                                    sinks=sinks, sink_bias=sink_bias, log_gate=log_gate)


def hybrid_decode_step(
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
    pos: int | torch.Tensor,
    valid: torch.Tensor,
    linear: bool = True,
    scale: float | None = None,
    *,
    sink_state: SinkState | None = None,
    sink_bias: torch.Tensor | None = None,
    log_gate: torch.Tensor | None = None,
    win_decay: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decoding step, updating (win_k, win_v, win_valid, S, z) in place; arguments and
    result as `hybrid_decode_step_naive`. On the kernel path `pos` may be a one-element device
    tensor, which keeps the step free of host syncs (CUDA graphs)."""
    extras = dict(sink_state=sink_state, sink_bias=sink_bias, log_gate=log_gate, win_decay=win_decay)
    if _wants_triton(q):
        reason = _common_reason(q, k, kf_fold, {"q, k, v, window": (q, k, v, win_k, win_v),
                                                "qf, kf_fold": (qf, kf_fold)})
        if reason is None and (S.dtype != torch.float32 or z.dtype != torch.float32):
            reason = "decode state S, z must be fp32"
        if reason is None and win_k.shape[2] > _MAX_DIM:
            reason = f"windows above {_MAX_DIM} tokens are not supported by the decode kernel"
        if reason is None and (win_valid.dtype != torch.bool or valid.dtype != torch.bool):
            reason = "win_valid and valid must be bool"
        if reason is None and not all(x.is_contiguous() for x in (win_k, win_v, win_valid, S, z)):
            reason = "the decode state must be contiguous (it is updated in place)"
        reason = reason or _decode_extras_reason(win_k, sink_state, log_gate, win_decay)
        if reason is None:
            from .hybrid_decode.triton_step import hybrid_decode_step_triton

            return hybrid_decode_step_triton(q, k, v, qf, kf_fold, gamma, win_k, win_v, win_valid,
                                             S, z, pos, valid, linear, scale, **extras)
        _warn_once(reason)
    if torch.is_tensor(pos):
        pos = int(pos)
    return hybrid_decode_step_naive(q, k, v, qf, kf_fold, gamma, win_k, win_v, win_valid, S, z,
                                    pos, valid, linear, scale, **extras)
