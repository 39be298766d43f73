"""Probe the Triton hybrid attention on very short inputs (T < 16, one feature head) on a GPU.

The dispatcher routes these to PyTorch since a T = 1, Hk = 1 prefill hit an illegal memory
access on an H100. Each case runs in its own process (a CUDA fault poisons the context) with
CUDA_LAUNCH_BLOCKING=1, calling the kernel directly (forward and backward) and comparing with
the naive reference. Prints one line per case.

    python experiments/short_sequence_probe.py            # on the GPU machine
"""

import itertools
import os
import subprocess
import sys

CASE = """
import torch
from lolcats_kernels import hybrid_attention_naive
from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton
T, Hk, dtype = {T}, {Hk}, torch.{dtype}
torch.manual_seed(0)
B, H, Hkv, D, F = 2, 4, 1, 64, 32
mk = lambda *s: torch.randn(*s, device="cuda", dtype=dtype).requires_grad_()
q, k, v = mk(B, H, T, D), mk(B, Hkv, T, D), mk(B, Hkv, T, D)
qf, kf = (torch.rand(B, H, T, F, device="cuda", dtype=dtype).requires_grad_(),
          torch.rand(B, Hk, T, F, device="cuda", dtype=dtype).requires_grad_())
g = torch.full((H,), 0.5, device="cuda")
xs = (q, k, v, qf, kf)
y = hybrid_attention_triton(q, k, v, qf, kf, g, {window}, True)
y.float().sum().backward()
torch.cuda.synchronize()
refs = [x.detach().float().requires_grad_() for x in xs]
yr = hybrid_attention_naive(*refs, g, {window}, True)
yr.sum().backward()
err = max([(y.float() - yr).abs().max().item()] + [(x.grad.float() - r.grad).abs().max().item() for x, r in zip(xs, refs)])
print(f"max abs error {{err:.2e}}")
"""


def main() -> None:
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    cases = [*itertools.product([1, 2, 15], [1, 2], ["bfloat16"], [4]), (1, 1, "float32", 0), (16, 1, "bfloat16", 4)]
    for T, Hk, dtype, window in cases:
        proc = subprocess.run([sys.executable, "-c", CASE.format(T=T, Hk=Hk, dtype=dtype, window=window)],
                              env=env, capture_output=True, text=True, timeout=120)
        last = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or [""]
        status = "ok" if proc.returncode == 0 else f"FAILED rc={proc.returncode}"
        print(f"T={T:2d} Hk={Hk} {dtype:8s} window={window}: {status}: {last[0][:200]}", flush=True)


if __name__ == "__main__":
    main()
