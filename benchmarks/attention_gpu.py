"""Speed and memory of the hybrid-attention kernels on one GPU (DESIGN.md section 5).

    python benchmarks/attention_gpu.py run --out DIR      # on the GPU: DIR/attention_gpu.json
    python benchmarks/attention_gpu.py sweep              # on the GPU: kernel launch configs
    python benchmarks/attention_gpu.py plot DIR/attention_gpu.json --docs docs
                                                          # anywhere: figures + markdown tables

Attention alone, Llama-3-8B shape: B=1, 32 query heads, 8 K/V heads, head dim 128, bf16,
window 64, feature size 128 per query head; T = 1k..128k. Rows: ours forward and
forward+backward, causal SDPA (flash backend, K/V repeated to 32 heads as HF does), and fla
`chunk_linear_attn` on the same features (scale 1; normalize=False is the bare chunked kernel,
normalize=True adds fla's normaliser). Peak memory is what a call allocates beyond its inputs.
Decode: one step of our kernel (window + state, flat in context) against SDPA attending one
query per head over a KV cache of the context length; both as CUDA-graph replays.
"""

import argparse
import functools
import json
import math
import sys

import torch

B, H, HKV, D, F, WINDOW = 1, 32, 8, 128, 128, 64
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
DECODE_LENGTHS = [1024, 4096, 16384, 65536, 131072]
DECODE_BATCHES = [1, 64]


def measure(fn, backward: bool, params=()):
    """Median ms of fn (with a backward pass through its output when asked; the gradients of
    params are cleared between calls) and peak GiB allocated beyond what existed before."""
    import triton

    def step():
        out = fn()
        if backward:
            out.backward(torch.ones_like(out))

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        ms = triton.testing.do_bench(step, warmup=25, rep=100, grad_to_none=list(params),
                                     return_mode="median")
    except torch.cuda.OutOfMemoryError:
        return None, None
    return ms, peak


def attention_rows(T: int, fla_fn):
    """{name: (fwd_ms, fwd_GiB, fwdbwd_ms, fwdbwd_GiB)} at one sequence length."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(B, H, T, D, device=dev, dtype=dt)
    k, v = (torch.randn(B, HKV, T, D, device=dev, dtype=dt) for _ in range(2))
    qf, kf = (torch.rand(B, H, T, F, device=dev, dtype=dt) / F for _ in range(2))
    gamma = torch.full((H,), 0.1, device=dev)
    k_rep, v_rep = (x.repeat_interleave(H // HKV, 1) for x in (k, v))
    v_bthd = v_rep.transpose(1, 2).contiguous()
    qf_bthd, kf_bthd = (x.transpose(1, 2).contiguous() for x in (qf, kf))
    del k_rep, v_rep

    def ours():
        return hybrid_attention_triton(q, k, v, qf, kf, gamma, WINDOW)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, kr, vr, is_causal=True)

    def fla(normalize):
        return lambda: fla_fn(qf_bthd, kf_bthd, v_bthd, scale=1.0, normalize=normalize)[0]

    rows = {}
    kr = vr = None
    candidates = {"ours": ours, "sdpa_flash": sdpa}
    if fla_fn is not None:
        candidates |= {"fla_chunk": fla(False), "fla_chunk_normalized": fla(True)}
    for name, fn in candidates.items():
        if name == "sdpa_flash":  # repeated K/V exist only while SDPA runs, as in HF
            kr, vr = (x.repeat_interleave(H // HKV, 1) for x in (k, v))
        with torch.no_grad():
            fwd = measure(fn, backward=False)
        params = [x for x in (q, k, v, qf, kf, gamma, qf_bthd, kf_bthd, v_bthd, kr, vr) if x is not None]
        for x in params:
            x.requires_grad_(True)
        bwd = measure(fn, backward=True, params=params)
        for x in params:
            x.requires_grad_(False)
            x.grad = None
        rows[name] = (*fwd, *bwd)
        kr = vr = None
        torch.cuda.empty_cache()
    return rows


def graph_ms(fn) -> float:
    """Median ms of one CUDA-graph replay of fn."""
    import triton

    fn()
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")


def decode_rows(batch: int):
    """{context: (ours_ms, sdpa_ms)} for one decode step of one layer."""
    from lolcats_kernels.hybrid_decode.triton_step import hybrid_decode_step_triton

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(batch, H, D, device=dev, dtype=dt)
    k, v = (torch.randn(batch, HKV, D, device=dev, dtype=dt) for _ in range(2))
    qf, kf = (torch.rand(batch, H, F, device=dev, dtype=dt) for _ in range(2))
    gamma = torch.full((H,), 0.1, device=dev)
    win_k, win_v = (torch.randn(batch, HKV, WINDOW, D, device=dev, dtype=dt) for _ in range(2))
    win_valid = torch.ones(batch, WINDOW, dtype=torch.bool, device=dev)
    S = torch.rand(batch, H, F, D, device=dev)
    z = torch.rand(batch, H, F, device=dev)
    valid = torch.ones(batch, dtype=torch.bool, device=dev)
    rows = {}
    for T in DECODE_LENGTHS:
        pos = torch.tensor(T, device=dev)
        ours = graph_ms(lambda: hybrid_decode_step_triton(q, k, v, qf, kf, gamma, win_k, win_v,
                                                          win_valid, S, z, pos, valid))
        try:  # the 4 query heads of a K/V group act as 4 queries over that head's cache
            kc, vc = (torch.randn(batch, HKV, T, D, device=dev, dtype=dt) for _ in range(2))
            qg = q.view(batch, HKV, H // HKV, D)
            # partial holds the tensors themselves, not a closure over names that `del` unbinds;
            # it is dropped when graph_ms returns, so `del` frees the cache before the next length.
            sdpa = graph_ms(functools.partial(torch.nn.functional.scaled_dot_product_attention, qg, kc, vc))
            del kc, vc
        except torch.cuda.OutOfMemoryError:
            sdpa = None
        torch.cuda.empty_cache()
        rows[T] = (ours, sdpa)
    return rows


def environment() -> dict:
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda}


def run(out_dir: str, lengths: list[int]) -> None:
    try:
        import fla
        from fla.ops.linear_attn import chunk_linear_attn
        fla_version = fla.__version__
    except ImportError:
        chunk_linear_attn, fla_version = None, None
    result = {"env": environment() | {"fla": fla_version}, "attention": {}, "decode": {}}
    def save():  # after every row, so that a run cut short keeps what it measured
        with open(f"{out_dir}/attention_gpu.json", "w") as f:
            json.dump(result, f, indent=1)

    for T in lengths:
        result["attention"][T] = attention_rows(T, chunk_linear_attn)
        print(T, {n: tuple(None if x is None else round(x, 3) for x in r)
                  for n, r in result["attention"][T].items()}, flush=True)
        save()
    for batch in DECODE_BATCHES:
        result["decode"][batch] = decode_rows(batch)
        print("decode", batch, result["decode"][batch], flush=True)
        save()


def kernel_ms(fn, reps: int = 20) -> dict[str, float]:
    """{kernel name: mean GPU ms per call of fn} from torch.profiler over `reps` calls."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / 1e3 / reps for e in prof.key_averages()
            if e.device_time_total > 0 and e.key.startswith("_")}


def sweep(T: int = 16384) -> None:
    """GPU time of each kernel of one forward/backward (B=1, 32 heads, head dim 128, features
    128) under several block lengths and launch configurations: where the time goes, and the
    best (num_warps, num_stages) for each kernel."""
    from lolcats_kernels.hybrid_attention.triton_bwd import attention_bwd
    from lolcats_kernels.hybrid_attention.triton_function import window_blocks
    from lolcats_kernels.hybrid_attention.triton_fwd import attention_fwd
    from lolcats_kernels.hybrid_attention.triton_state import state_bwd, state_fwd

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(B, H, T, D, device=dev, dtype=dt)
    k, v = (torch.randn(B, HKV, T, D, device=dev, dtype=dt) for _ in range(2))
    qf = torch.rand(B, H, T, F, device=dev, dtype=dt) / F
    kf = torch.rand(B, HKV, T, F, device=dev, dtype=dt) / F
    g = torch.full((H,), 0.1, device=dev)
    do = torch.randn_like(q)
    scale = D**-0.5
    print(f"sweep T={T}: GPU ms per kernel")
    for chunk, split in ((64, 1), (64, 2), (32, 1)):  # split: dk/dv key tiles of chunk / split keys
        delta = window_blocks(WINDOW, chunk)
        h, z = state_fwd(kf, v, None, HKV, delta, chunk)
        for warps, stages in ((4, 1), (4, 2), (4, 3), (8, 1), (8, 2), (8, 3)):
            def fwd():
                return attention_fwd(q, k, v, qf, kf, g, h, z, None, WINDOW, True, scale, delta, chunk,
                                     num_warps=warps, num_stages=stages)

            o, cs, inv, lin_e = fwd()

            def bwd():
                return attention_bwd(q, k, v, qf, kf, g, h, z, o, do, cs, inv, lin_e, None,
                                     lambda d: state_bwd(qf, do, lin_e, inv, d, HKV, delta, chunk),
                                     WINDOW, True, scale, delta, chunk, dq_launch=(warps, stages),
                                     dkv_launch=(warps, stages), dkv_split=split)
            try:
                times = kernel_ms(lambda: (state_fwd(kf, v, None, HKV, delta, chunk), fwd(), bwd()))
            except Exception as err:  # a config over the shared-memory limit
                print(f"chunk {chunk} dkv tile {chunk // split} warps {warps} stages {stages}: "
                      f"{type(err).__name__}", flush=True)
                continue
            cells = " ".join(f"{name}={ms:.3f}" for name, ms in sorted(times.items()))
            print(f"chunk {chunk} dkv tile {chunk // split} warps {warps} stages {stages}: "
                  f"total {sum(times.values()):.3f} | {cells}", flush=True)


def plot(path: str, docs: str) -> None:
    """Figures into docs/figures/ and markdown tables on stdout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.load(open(path))
    att = {int(T): rows for T, rows in res["attention"].items()}
    Ts = sorted(att)
    names = list(att[Ts[0]])
    labels = {"ours": "hybrid (ours, w=64)", "sdpa_flash": "causal SDPA (flash)",
              "fla_chunk": "fla chunk_linear_attn", "fla_chunk_normalized": "fla chunk_linear_attn, normalized"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for col, (idx, title) in enumerate([(0, "forward (ms)"), (2, "forward + backward (ms)"),
                                        (3, "peak memory, forward + backward (GiB)")]):
        for name in names:
            pts = [(T, att[T][name][idx]) for T in Ts if att[T][name][idx] is not None]
            axes[col].plot(*zip(*pts), marker="o", label=labels.get(name, name))
        axes[col].set(xscale="log", yscale="log", xlabel="sequence length T", title=title)
        axes[col].set_xticks(Ts, [f"{T // 1024}k" for T in Ts])
        axes[col].grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Attention alone, B=1, 32 heads (8 K/V), d=128, bf16 - {res['env']['device']}")
    fig.tight_layout()
    fig.savefig(f"{docs}/figures/kernels_attention.png", dpi=110)

    dec = {int(b): {int(T): r for T, r in rows.items()} for b, rows in res["decode"].items()}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for b, rows in dec.items():
        ctx = sorted(rows)
        ax.plot(ctx, [rows[T][0] for T in ctx], marker="o", label=f"hybrid step (ours), batch {b}")
        pts = [(T, rows[T][1]) for T in ctx if rows[T][1] is not None]
        ax.plot(*zip(*pts), marker="s", linestyle="--", label=f"SDPA over KV cache, batch {b}")
    ax.set(xscale="log", yscale="log", xlabel="context length", ylabel="ms per layer step",
           title="Decode step, one layer (CUDA-graph replay)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{docs}/figures/kernels_decode.png", dpi=110)

    def cell(x, fmt):
        return "OOM" if x is None else fmt.format(x)

    print("| T | " + " | ".join(f"{labels.get(n, n)} fwd / fwd+bwd ms" for n in names)
          + " | SDPA / ours, fwd+bwd | ours / fla, fwd+bwd |")
    print("|---" * (len(names) + 3) + "|")
    for T in Ts:
        r = att[T]
        vs_sdpa = r["sdpa_flash"][2] / r["ours"][2] if r["sdpa_flash"][2] else math.nan
        vs_fla = r["ours"][2] / r["fla_chunk"][2] if "fla_chunk" in r and r["fla_chunk"][2] else math.nan
        print(f"| {T // 1024}k | " + " | ".join(f"{cell(r[n][0], '{:.3f}')} / {cell(r[n][2], '{:.3f}')}"
                                               for n in names)
              + f" | {vs_sdpa:.2f} | {vs_fla:.2f} |")
    print()
    print("| T | " + " | ".join(f"{labels.get(n, n)} fwd / fwd+bwd GiB" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for T in Ts:
        print(f"| {T // 1024}k | " + " | ".join(f"{cell(att[T][n][1], '{:.2f}')} / {cell(att[T][n][3], '{:.2f}')}"
                                               for n in names) + " |")
    print()
    print("| context | " + " | ".join(f"ours b={b} ms | SDPA b={b} ms" for b in dec) + " |")
    print("|---" * (2 * len(dec) + 1) + "|")
    for T in sorted(next(iter(dec.values()))):
        print(f"| {T // 1024}k | " + " | ".join(f"{dec[b][T][0]:.4f} | {cell(dec[b][T][1], '{:.4f}')}"
                                                for b in dec) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default=".")
    r.add_argument("--max-len", type=int, default=LENGTHS[-1])
    sub.add_parser("sweep")
    pl = sub.add_parser("plot")
    pl.add_argument("json")
    pl.add_argument("--docs", default="docs")
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.out, [T for T in LENGTHS if T <= a.max_len])
    elif a.cmd == "sweep":
        sweep()
    else:
        plot(a.json, a.docs)


if __name__ == "__main__":
    sys.exit(main())
