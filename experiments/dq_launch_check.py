"""Does a dq-kernel launch configuration compute the same gradients as the default? (GPU)

dq at (4 warps, 1 stage) is the fastest launch on an H100 (docs/performance.md) but hit an
illegal memory access in the fp16 varlen/dense tests, whose head size (24) and feature size (12)
are masked tiles. This script runs one of those cases (and a full-size bf16 one) forward and
backward with the launch under test and with the default, and compares the gradients; run it
under `compute-sanitizer --tool memcheck` to see the faulting access, if any:

    compute-sanitizer --tool memcheck python3 experiments/dq_launch_check.py --launch 4,1
"""

import argparse
import importlib

import torch


def case(lengths, H, Hkv, Hk, D, F, dtype, device="cuda"):
    """Packed inputs (B = 1) with cu_seqlens."""
    torch.manual_seed(0)
    T = sum(lengths)
    x = [torch.randn(1, h, T, D, device=device).to(dtype).requires_grad_() for h in (H, Hkv, Hkv)]
    x += [(torch.rand(1, h, T, F, device=device) / F).to(dtype).requires_grad_() for h in (H, Hk)]
    gamma = (torch.rand(H, device=device) * 0.9 + 0.05).requires_grad_()
    cu = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    return x + [gamma], cu


def gradients(inputs, cu, window, launch):
    """Gradients of every input through the Triton path with the dq kernel at `launch`."""
    function = importlib.import_module("lolcats_kernels.hybrid_attention.triton_function")
    backward = importlib.import_module("lolcats_kernels.hybrid_attention.triton_bwd").attention_bwd
    function.attention_bwd = lambda *a, **k: backward(*a, **{**k, "dq_launch": launch})
    try:
        for x in inputs:
            x.grad = None
        y = function.hybrid_attention_triton(*inputs, window, True, None, None, None, cu)
        y.float().square().sum().backward()
        if y.is_cuda:
            torch.cuda.synchronize()
        return [x.grad.float().clone() for x in inputs]
    finally:
        function.attention_bwd = backward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--launch", default="4,1", help="num_warps,num_stages of the dq kernel under test")
    args = ap.parse_args()
    launch = tuple(int(x) for x in args.launch.split(","))
    cases = {"fp16 varlen, D=24, F=12 (the failing test)": ([30, 1, 19, 7], 4, 2, 4, 24, 12, torch.float16, 5),
             "bf16 varlen, D=128, F=128": ([3000, 1000, 96], 8, 2, 8, 128, 128, torch.bfloat16, 64)}
    for name, (*shape, window) in cases.items():
        inputs, cu = case(*shape)
        reference = gradients(inputs, cu, window, (4, 2))
        tested = gradients(inputs, cu, window, launch)
        worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) for a, b in zip(tested, reference))
        print(f"{name}: dq launch {launch} vs (4, 2): largest relative gradient difference {worst:.2e}", flush=True)


if __name__ == "__main__":
    main()
