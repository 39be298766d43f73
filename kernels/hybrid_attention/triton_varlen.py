"""Chunk indexing of packed variable-length sequences for the Triton kernels.

The sequences lie back to back along time in a batch of one (`cu_seqlens`: S + 1 offsets).
Each is cut into its own blocks of BT tokens, so that no block straddles two sequences; the
blocks of all sequences are numbered one after the other (NT in all). An attention program
takes block i_t, looks up (sequence, block of that sequence) in `chunk_indices`, and works in
positions local to its sequence: window, linear part and prefix states restart at each start.
A state program takes one sequence and writes its states from block `chunk_offsets[s]` on.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class VarlenChunks(NamedTuple):
    """cu_seqlens: (S + 1,) int32; chunk_indices: (NT, 2) int32 rows (sequence, block of it);
    chunk_offsets: (S + 1,) int32, the first global block of each sequence."""

    cu_seqlens: torch.Tensor
    chunk_indices: torch.Tensor
    chunk_offsets: torch.Tensor

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_chunks(self) -> int:
        return self.chunk_indices.shape[0]


def prepare_chunks(cu_seqlens: torch.Tensor, chunk: int, total: int) -> VarlenChunks:
    """Blocks of BT = chunk tokens of every sequence of a packed row of `total` tokens; one host
    sync (NT sizes the grid), which also checks the offsets: the kernels do not bound-check them."""
    cu = cu_seqlens.to(torch.int32).contiguous()
    lengths = cu.diff()
    counts = triton.cdiv(lengths, chunk)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
    first, last, shortest, num_chunks = torch.stack(
        [cu[0], cu[-1], lengths.min() if lengths.numel() else cu[0], offsets[-1]]).tolist()
    if first != 0 or last != total or shortest < 0:
        raise ValueError(f"cu_seqlens must rise from 0 to the packed length {total}")
    seq = torch.repeat_interleave(torch.arange(counts.numel(), device=cu.device), counts,
                                  output_size=num_chunks)
    local = torch.arange(num_chunks, device=cu.device) - offsets[seq]
    return VarlenChunks(cu, torch.stack([seq, local], 1).to(torch.int32).contiguous(), offsets)


@triton.jit
def seq_bounds(cu_seqlens, i_s):
    """Start (int64, for pointer offsets) and length (int32) of sequence i_s in the packed row."""
    bos = tl.load(cu_seqlens + i_s)
    return bos.to(tl.int64), tl.load(cu_seqlens + i_s + 1) - bos


@triton.jit
def seq_chunk(chunk_indices, cu_seqlens, i_t):
    """Global block i_t -> (block of its sequence, sequence start, sequence length)."""
    i_s = tl.load(chunk_indices + i_t * 2)
    bos, seq_len = seq_bounds(cu_seqlens, i_s)
    return tl.load(chunk_indices + i_t * 2 + 1), bos, seq_len
