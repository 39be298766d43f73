"""Packed variable-length sequences against the reference run on each sequence alone."""

import pytest
import torch

from lolcats_kernels import hybrid_attention_naive, hybrid_attention_varlen

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("force_triton", [False, True])
def test_packed_matches_per_sequence(monkeypatch, force_triton):
    if force_triton:
        pytest.importorskip("triton")
        monkeypatch.setenv("LOLCATS_FORCE_TRITON", "1")
    elif CUDA:
        pytest.skip("the PyTorch path is the CPU one")
    lengths, H, Hkv, D, F, window = [17, 1, 40, 23], 4, 2, 16, 8, 6
    total = sum(lengths)
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0)
    xs = [torch.randn(1, H, total, D), torch.randn(1, Hkv, total, D), torch.randn(1, Hkv, total, D),
          torch.rand(1, H, total, F), torch.rand(1, H, total, F), torch.rand(H)]
    xs = [x.to(DEVICE).requires_grad_() for x in xs]
    y = hybrid_attention_varlen(*xs, window, cu)
    do = torch.randn_like(y)
    (y * do).sum().backward()
    grads = [x.grad.clone() for x in xs]
    for x in xs:
        x.grad = None
    refs = []
    for s in range(len(lengths)):
        part = slice(int(cu[s]), int(cu[s + 1]))
        ref = hybrid_attention_naive(*(x[:, :, part] for x in xs[:5]), xs[5], window)
        (ref * do[:, :, part]).sum().backward()
        refs.append(ref)
    torch.testing.assert_close(y, torch.cat(refs, 2), atol=5e-3 if CUDA else 1e-5, rtol=1e-4)  # tf32 dots on GPU
    for g, x in zip(grads, xs):
        torch.testing.assert_close(g, x.grad, atol=5e-3 if CUDA else 1e-4, rtol=1e-3)
