"""Hybrid-attention ops: Triton kernels on GPU, plain-PyTorch references on CPU.

`hybrid_attention` and `hybrid_decode_step` dispatch by device (see `dispatch.py`);
`hybrid_attention_varlen` takes packed sequences (`cu_seqlens`); the references are exported
for tests and for explicit use.
"""

from .dispatch import hybrid_attention, hybrid_decode_step
from .hybrid_attention.chunked import hybrid_attention_chunked
from .hybrid_attention.naive import hybrid_attention_naive
from .hybrid_decode.naive import hybrid_decode_step_naive
from .varlen import hybrid_attention_varlen

__all__ = [
    "hybrid_attention",
    "hybrid_attention_varlen",
    "hybrid_decode_step",
    "hybrid_attention_chunked",
    "hybrid_attention_naive",
    "hybrid_decode_step_naive",
]
