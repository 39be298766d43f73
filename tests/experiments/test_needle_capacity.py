"""experiments/needle_capacity.py: its attention weights are those of the library's hybrid attention."""

import sys
from pathlib import Path

import torch

from lolcats_core.feature_maps import Hedgehog
from lolcats_kernels.hybrid_attention.naive import hybrid_attention_naive

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import needle_capacity  # noqa: E402


def test_probe_weights_reproduce_the_reference_attention():
    torch.manual_seed(0)
    H, Hkv, T, D, f, window = 4, 2, 40, 8, 6, 5
    q, k, v = torch.randn(H, T, D), torch.randn(Hkv, T, D), torch.randn(Hkv, T, D)
    fq, fk = Hedgehog(H, D, f), Hedgehog(H, D, f)
    for fm in (fq, fk):
        fm.weight.data.normal_()
    gate = torch.randn(H)
    rows = torch.tensor([0, 3, 17, T - 1])
    with torch.no_grad():
        w = needle_capacity.student_weights(q, k, rows, D**-0.5, fq, fk, gate, window)
        out = w @ v.repeat_interleave(H // Hkv, 0)
        ref = hybrid_attention_naive(q[None], k[None], v[None], fq(q[None]), fk(k[None]), torch.sigmoid(gate),
                                     window)[0]
    torch.testing.assert_close(out, ref[:, rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(H, len(rows)))
    # the teacher's weights are causal softmax
    t = needle_capacity.teacher_weights(q, k, rows, D**-0.5)
    assert torch.all(t[:, 1, 4:] == 0) and torch.allclose(t.sum(-1), torch.ones(H, len(rows)))
