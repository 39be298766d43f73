"""Cross-entropy through the output head, a chunk of rows at a time: never all the logits at once.

The plain computation holds the whole (tokens, vocab) logits in the model's dtype, an fp32
copy and, in the backward, fp32 gradients of the same size: 12 GiB at 8 x 1024 tokens and
Llama 3's 128,256-token vocabulary. Here the forward takes `rows` hidden states at a time
through the head, adds their fp32 loss and, when a gradient is wanted, turns that chunk's
logits at once into the gradient of the mean loss with respect to its hidden states; the
backward only scales it. The head's memory is then one chunk of logits plus a gradient the
size of the hidden states, and the head's matmul is not recomputed.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LolcatsError

# fp32 logits per chunk: 1,046 rows at Llama 3's vocabulary, 2,730 at SmolLM2's 49,152
CHUNK_BYTES = 512 * 2**20


def chunk_rows(vocab: int) -> int:
    """Rows per chunk for a vocabulary of `vocab` tokens (CHUNK_BYTES of fp32 logits)."""
    return max(1, CHUNK_BYTES // (4 * vocab))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """forward(hidden (N, d), weight (V, d), bias (V,) or None, target (N,) int64, rows, backward) ->
    mean fp32 loss over the N rows; only `hidden` gets a gradient, computed when `backward`
    (grad mode on: `ctx.needs_input_grad` ignores torch.no_grad)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, rows, backward):
        n = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if backward else None
        for start in range(0, n, rows):
            h, t = hidden[start:start + rows], target[start:start + rows, None]
            logits = F.linear(h, weight, bias).float()  # (rows, V), the only logits alive
            lse = logits.logsumexp(-1, keepdim=True)
            total += (lse - logits.gather(-1, t)).sum()
            if grad is not None:  # d(mean loss)/d(logits) = (softmax - one_hot) / n
                d = logits.sub_(lse).exp_()
                d.scatter_add_(-1, t, torch.full_like(t, -1, dtype=d.dtype)).div_(n)
                grad[start:start + rows] = d.to(hidden.dtype) @ weight
        ctx.save_for_backward(grad)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, head: nn.Module, target: torch.Tensor,
                          rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` against `target`, in fp32, `rows` rows at a time.

    hidden: (N, d) in the head's dtype; head: a frozen `nn.Linear` (vocab V); target: (N,) int64
    token ids; rows: default `chunk_rows(V)`. Equals
    `F.cross_entropy(head(hidden).float(), target)`, with its gradient for `hidden`.
    """
    if not isinstance(head, nn.Linear) or any(p.requires_grad for p in head.parameters()):
        raise LolcatsError(f"the chunked next-token loss needs a frozen nn.Linear output head, got "
                           f"{type(head).__name__} (LoRA or training on the output head is not supported)")
    backward = torch.is_grad_enabled() and hidden.requires_grad
    return _ChunkedCrossEntropy.apply(hidden, head.weight, head.bias, target, rows or chunk_rows(head.out_features),
                                      backward)
