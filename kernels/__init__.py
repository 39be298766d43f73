"""Hybrid-attention ops: Triton kernels on GPU, plain-PyTorch references on CPU."""

from .hybrid_attention.chunked import hybrid_attention_chunked
from .hybrid_attention.naive import hybrid_attention_naive
from .hybrid_decode.naive import hybrid_decode_step_naive

hybrid_attention = hybrid_attention_chunked
hybrid_decode_step = hybrid_decode_step_naive

__all__ = ["hybrid_attention", "hybrid_decode_step", "hybrid_attention_chunked", "hybrid_attention_naive", "hybrid_decode_step_naive"]
