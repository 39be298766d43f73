"""Speed and memory of the hybrid-attention kernels on one GPU (DESIGN.md section 5).

    python benchmarks/attention_gpu.py run --out DIR      # on the GPU: DIR/attention_gpu.json
    python benchmarks/attention_gpu.py sweep              # on the GPU: kernel launch configs
    python benchmarks/attention_gpu.py plot DIR/attention_gpu.json --docs docs
                                                          # anywhere: figures + markdown tables

Attention alone, Llama-3-8B shape: B=1, 32 query heads, 8 K/V heads, head dim 128, bf16,
window 64 (and 256 for the plain row), feature size 128 per query head; T = 1k..128k. Rows:
ours forward and forward+backward, plain, with the gated linear state (log_gate (B, 32, T) fp32,
logsigmoid(x) / 16 as `LolcatsAttention.log_gate` makes it) and with 4 sinks (learned sink
logits) + the gate; causal SDPA (flash backend, K/V repeated to 32 heads as HF does); fla on the
same features (scale 1): `chunk_linear_attn` (normalize=False is the bare chunked kernel,
normalize=True adds fla's normaliser), `chunk_gla` with our per-head gate broadcast over the 128
features (g (B, T, 32, 128), log space) and `chunk_simple_gla` with the per-head gate itself
(g (B, T, 32)). A missing fla (or op) drops its rows. Peak memory is what a call allocates
beyond its inputs.
Decode: one step of our kernel (window + state, flat in context) against SDPA attending one
query per head over a KV cache of the context length; both as CUDA-graph replays. Decode 8B:
tokens/s of the attention of a whole 8B-shaped model per decode step, one CUDA graph per step,
at batch 1024 and 2048 after a 4096-token history (benchmarks/attention_decode_gpu.py).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

B, H, HKV, D, F, WINDOW, SINKS = 1, 32, 8, 128, 128, 64, 4
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
COMMAND = "python benchmarks/attention_gpu.py run --out DIR"
WIDE_WINDOW = 256  # the window that keeps short code prompts exact (docs/results.md)
LABELS = {"ours": "hybrid (ours, w=64)", "ours_w256": f"hybrid (ours, w={WIDE_WINDOW})", "ours_gate": "hybrid + gate (ours)",
          "ours_sinks_gate": "hybrid + 4 sinks + gate (ours)", "sdpa_flash": "causal SDPA (flash)",
          "fla_chunk": "fla chunk_linear_attn", "fla_chunk_normalized": "fla chunk_linear_attn, normalized",
          "fla_gla": "fla chunk_gla", "fla_simple_gla": "fla chunk_simple_gla"}
SHORT = {"ours": "ours", "ours_w256": f"ours w={WIDE_WINDOW}", "ours_gate": "ours+gate", "ours_sinks_gate": "ours+sinks+gate", "sdpa_flash": "SDPA",
         "fla_chunk": "fla chunk", "fla_gla": "fla gla", "fla_simple_gla": "fla simple_gla"}
# (title, rows, ratio columns (numerator, denominator)) of the attention time tables
TIME_TABLES = [
    ("Attention without gate, ms", ["ours", "ours_w256", "sdpa_flash", "fla_chunk", "fla_chunk_normalized"],
     [("sdpa_flash", "ours"), ("ours", "fla_chunk")]),
    ("Attention with the gated state, ms", ["ours_gate", "ours_sinks_gate", "fla_gla", "fla_simple_gla"],
     [("ours_gate", "fla_gla"), ("ours_sinks_gate", "fla_gla"), ("ours_gate", "fla_simple_gla")]),
]


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


def fwd_bwd(fn, params: list) -> tuple:
    """(fwd_ms, fwd_GiB, fwdbwd_ms, fwdbwd_GiB) of fn; params take gradients in the backward."""
    with torch.no_grad():
        fwd = measure(fn, backward=False)
    for p in params:
        p.requires_grad_(True)
    try:
        bwd = measure(fn, backward=True, params=params)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return (*fwd, *bwd)


def attention_inputs(T: int, dev: str = "cuda") -> dict:
    """Random inputs at length T: ours (B, heads, T, dim) and fla's (B, T, heads, dim) layouts."""
    dt = torch.bfloat16
    x = {"q": torch.randn(B, H, T, D, device=dev, dtype=dt)}
    x["k"], x["v"] = (torch.randn(B, HKV, T, D, device=dev, dtype=dt) for _ in range(2))
    x["qf"], x["kf"] = (torch.rand(B, H, T, F, device=dev, dtype=dt) / F for _ in range(2))
    x["gamma"] = torch.full((H,), 0.1, device=dev)
    x["sink_bias"] = torch.zeros(H, device=dev)
    x["log_gate"] = torch.nn.functional.logsigmoid(torch.randn(B, H, T, device=dev)) / 16  # (B, Hk, T)
    x["v_bthd"] = x["v"].repeat_interleave(H // HKV, 1).transpose(1, 2).contiguous()
    x["qf_bthd"], x["kf_bthd"] = (x[n].transpose(1, 2).contiguous() for n in ("qf", "kf"))
    x["g_bth"] = x["log_gate"].transpose(1, 2).contiguous()  # chunk_simple_gla: one decay per head
    x["g_bthk"] = x["g_bth"][..., None].expand(B, T, H, F).contiguous()  # chunk_gla: per feature
    return x


def our_candidates(x: dict) -> dict:
    """{row: fn} of our kernel: plain (window 64 and 256), with the gate, with sinks and the gate."""
    from lolcats_kernels.hybrid_attention.triton_function import hybrid_attention_triton

    def ours(window=WINDOW, **extras):
        return lambda: hybrid_attention_triton(x["q"], x["k"], x["v"], x["qf"], x["kf"], x["gamma"], window,
                                               **extras)

    return {"ours": ours(), "ours_w256": ours(WIDE_WINDOW), "ours_gate": ours(log_gate=x["log_gate"]),
            "ours_sinks_gate": ours(sinks=SINKS, sink_bias=x["sink_bias"], log_gate=x["log_gate"])}


def fla_candidates(x: dict, ops: dict) -> dict:
    """{row: fn} of the fla ops present in `ops` (name: function), on the same features."""
    qf, kf, v = x["qf_bthd"], x["kf_bthd"], x["v_bthd"]
    rows = {}
    if "chunk_linear_attn" in ops:
        rows["fla_chunk"] = lambda: ops["chunk_linear_attn"](qf, kf, v, scale=1.0, normalize=False)[0]
        rows["fla_chunk_normalized"] = lambda: ops["chunk_linear_attn"](qf, kf, v, scale=1.0, normalize=True)[0]
    if "chunk_gla" in ops:
        rows["fla_gla"] = lambda: ops["chunk_gla"](qf, kf, v, x["g_bthk"], scale=1.0)[0]
    if "chunk_simple_gla" in ops:
        rows["fla_simple_gla"] = lambda: ops["chunk_simple_gla"](qf, kf, v, g=x["g_bth"], scale=1.0)[0]
    return rows


# fla's gated ops autotune for minutes on their first call: they run after every other row
GATED_FLA = ("fla_gla", "fla_simple_gla")


def attention_rows(T: int, fla_ops: dict, rows: dict | None = None, on_row=None, names=None) -> dict:
    """rows (filled in place, on_row() after each) = {name: (fwd_ms, fwd_GiB, fwdbwd_ms,
    fwdbwd_GiB)} at one sequence length, for the candidates in `names` (default all); fla_ops
    as `fla_candidates`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = attention_inputs(T)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(x["q"], x["kr"], x["vr"], is_causal=True)

    rows = {} if rows is None else rows
    candidates = our_candidates(x) | {"sdpa_flash": sdpa} | fla_candidates(x, fla_ops)
    for name, fn in candidates.items():
        if names is not None and name not in names:
            continue
        if name == "sdpa_flash":  # repeated K/V exist only while SDPA runs, as in HF
            x["kr"], x["vr"] = (x[n].repeat_interleave(H // HKV, 1) for n in ("k", "v"))
        try:
            rows[name] = fwd_bwd(fn, list(x.values()))
        except Exception as err:  # an fla op that fails (say, built for another Triton) loses its row only
            if not name.startswith("fla"):
                raise
            print(f"{name} at T={T}: {type(err).__name__}: {str(err)[:300]}", flush=True)
            continue
        finally:
            x.pop("kr", None), x.pop("vr", None)
        torch.cuda.empty_cache()
        if on_row:
            on_row()
    return rows


def environment() -> dict:
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda}


def fla_ops() -> tuple[dict, str | None]:
    """({name: function} of the fla ops compared with, fla's version); an op that does not
    import is left out, and without fla there are no fla rows."""
    import importlib

    ops = {}
    for module, name in (("linear_attn", "chunk_linear_attn"), ("gla", "chunk_gla"),
                         ("simple_gla", "chunk_simple_gla")):
        try:
            ops[name] = getattr(importlib.import_module(f"fla.ops.{module}"), name)
        except Exception as err:  # ImportError, or an fla that fails on import with this Triton
            print(f"fla: no {name} ({type(err).__name__}: {err})", flush=True)
    try:
        import fla

        return ops, fla.__version__
    except ImportError:
        return ops, None


def run(out_dir: str, lengths: list[int], parts: list[str], batches_8b: list[int], history: int,
        command: str) -> None:
    """Measure `parts` into OUT/attention_gpu.json; parts already in the file from an earlier
    run (another part) are kept."""
    path = Path(out_dir) / "attention_gpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = json.loads(path.read_text()) if path.exists() else {}
    ops, fla_version = fla_ops() if "attention" in parts else ({}, None)
    result["env"] = result.get("env", {}) | environment() | ({"fla": fla_version} if "attention" in parts else {})

    def save():  # after every row, so that a run cut short keeps what it measured
        path.write_text(json.dumps(result, indent=1))

    for part in parts:
        result[part] = {}
        result.setdefault("commands", {})[part] = command
    if "attention" in parts:
        for gated_fla in (False, True):  # every length without fla's gated ops first
            for T in lengths:
                rows = attention_rows(T, ops, result["attention"].setdefault(str(T), {}), on_row=save,
                                      names=set(GATED_FLA) if gated_fla else set(LABELS) - set(GATED_FLA))
                print(T, {n: tuple(None if x is None else round(x, 3) for x in r) for n, r in rows.items()},
                      flush=True)
    if "decode" in parts:
        from attention_decode_gpu import DECODE_BATCHES, decode_rows

        for batch in DECODE_BATCHES:
            result["decode"][str(batch)] = decode_rows(batch)
            print("decode", batch, result["decode"][str(batch)], flush=True)
            save()
    if "decode_8b" in parts:
        from attention_decode_gpu import decode_8b_rows

        def on_row(name, batch, row):
            result["decode_8b"].setdefault(name, {})[str(batch)] = row
            print("decode_8b", name, batch, row, flush=True)
            save()

        decode_8b_rows(batches_8b, history, on_row=on_row)


def kernel_ms(fn, reps: int = 20) -> dict[str, float]:
    """{kernel name: mean GPU ms per call of fn} from torch.profiler over `reps` calls: our
    Triton kernels by name (they start with "_"), every other GPU kernel (torch's sums, casts,
    copies between them) together as "torch"."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for e in prof.key_averages():
        if e.device_time_total > 0:
            name = e.key if e.key.startswith("_") else "torch"
            times[name] = times.get(name, 0.0) + e.device_time_total / 1e3 / reps
    return times


def sweep(T: int = 16384) -> None:
    """GPU time of each kernel of one forward/backward (B=1, 32 heads, head dim 128, features
    128, key feature maps per query head as in the timed rows and the default model) under
    several block lengths and launch configurations: where the time goes, and the best
    (num_warps, num_stages) for each kernel."""
    from lolcats_kernels.hybrid_attention.triton_bwd import attention_bwd
    from lolcats_kernels.hybrid_attention.triton_function import window_blocks
    from lolcats_kernels.hybrid_attention.triton_fwd import attention_fwd
    from lolcats_kernels.hybrid_attention.triton_state import state_bwd, state_fwd

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(B, H, T, D, device=dev, dtype=dt)
    k, v = (torch.randn(B, HKV, T, D, device=dev, dtype=dt) for _ in range(2))
    qf = torch.rand(B, H, T, F, device=dev, dtype=dt) / F
    kf = torch.rand(B, H, T, F, device=dev, dtype=dt) / F
    g = torch.full((H,), 0.1, device=dev)
    do = torch.randn_like(q)
    scale = D**-0.5
    print(f"sweep T={T}: GPU ms per kernel")
    for chunk, split in ((64, 1), (64, 2), (32, 1)):  # split: dk/dv key tiles of chunk / split keys
        delta = window_blocks(WINDOW, chunk)
        h, z = state_fwd(kf, v, None, HKV, delta, chunk)  # kf: (B, H, T, F), v: (B, HKV, T, D)
        for warps, stages in ((4, 1), (4, 2), (4, 3), (8, 1), (8, 2), (8, 3)):
            def fwd():
                return attention_fwd(q, k, v, qf, kf, g, h, z, None, WINDOW, True, scale, delta, chunk,
                                     num_warps=warps, num_stages=stages)

            o, cs, inv, lin_e = fwd()

            def bwd():
                return attention_bwd(q, k, v, qf, kf, g, h, z, o, do, cs, inv, lin_e, None,
                                     lambda d: state_bwd(qf, do, lin_e, inv, d, H, delta, chunk),
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


def row_names(att: dict) -> list[str]:
    """Rows present at any length, in LABELS order (unknown names last)."""
    present = {n for rows in att.values() for n in rows}
    return [n for n in LABELS if n in present] + sorted(present - set(LABELS))


def figures(res: dict, docs: str) -> None:
    """docs/figures/kernels_attention.png and kernels_decode.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    att = {int(T): rows for T, rows in res.get("attention", {}).items()}
    if att:
        Ts = sorted(att)
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        for col, (idx, title) in enumerate([(0, "forward (ms)"), (2, "forward + backward (ms)"),
                                            (3, "peak memory, forward + backward (GiB)")]):
            for name in row_names(att):
                pts = [(T, att[T][name][idx]) for T in Ts if att[T].get(name, [None] * 4)[idx] is not None]
                if pts:
                    axes[col].plot(*zip(*pts), marker="o", linestyle="-" if name.startswith("ours") else "--",
                                   label=LABELS.get(name, name))
            axes[col].set(xscale="log", yscale="log", xlabel="sequence length T", title=title)
            axes[col].set_xticks(Ts, [f"{T // 1024}k" for T in Ts])
            axes[col].grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Attention alone, B=1, 32 heads (8 K/V), d=128, bf16 - {res['env']['device']}")
        fig.tight_layout()
        fig.savefig(f"{docs}/figures/kernels_attention.png", dpi=110)

    dec = {int(b): {int(T): r for T, r in rows.items()} for b, rows in res.get("decode", {}).items()}
    if dec:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for b, rows in dec.items():
            ctx = sorted(rows)
            ax.plot(ctx, [rows[T][0] for T in ctx], marker="o", label=f"hybrid step (ours), batch {b}")
            pts = [(T, rows[T][1]) for T in ctx if rows[T][1] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="s", linestyle="--", label=f"SDPA over KV cache, batch {b}")
        ax.set(xscale="log", yscale="log", xlabel="context length", ylabel="ms per layer step",
               title="Decode step, one layer (CUDA-graph replay)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{docs}/figures/kernels_decode.png", dpi=110)


def cell(x, fmt: str) -> str:
    return "OOM" if x is None else fmt.format(x)


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def tables(res: dict) -> str:
    """Markdown tables of every part in `res`, each under a line naming the GPU and the command."""
    device, commands = res["env"]["device"], res.get("commands", {})
    out = []

    def caption(title, part):
        out.extend(["", f"**{title}** ({device}; `{commands.get(part, COMMAND)}`):", ""])

    att = {int(T): rows for T, rows in res.get("attention", {}).items()}
    Ts, present = sorted(att), row_names(att)
    for title, names, ratios in TIME_TABLES if att else []:
        names = [n for n in names if n in present]
        ratios = [(a, b) for a, b in ratios if a in present and b in present]
        if not names:
            continue
        caption(title + "; ratios fwd / fwd+bwd", "attention")
        out.append("| T | " + " | ".join(f"{LABELS.get(n, n)} fwd / fwd+bwd ms" for n in names)
                   + "".join(f" | {SHORT.get(a, a)} / {SHORT.get(b, b)}" for a, b in ratios) + " |")
        out.append("|---" * (1 + len(names) + len(ratios)) + "|")
        for T in Ts:
            r = {n: att[T].get(n, [None] * 4) for n in names + [x for p in ratios for x in p]}
            out.append(f"| {T // 1024}k | "
                       + " | ".join(f"{cell(r[n][0], '{:.3f}')} / {cell(r[n][2], '{:.3f}')}" for n in names)
                       + "".join(f" | {ratio(r[a][0], r[b][0])} / {ratio(r[a][2], r[b][2])}" for a, b in ratios)
                       + " |")
    if att:
        caption("Attention, peak memory beyond the inputs, GiB", "attention")
        out.append("| T | " + " | ".join(f"{LABELS.get(n, n)} fwd / fwd+bwd" for n in present) + " |")
        out.append("|---" * (len(present) + 1) + "|")
        for T in Ts:
            r = {n: att[T].get(n, [None] * 4) for n in present}
            out.append(f"| {T // 1024}k | " + " | ".join(f"{cell(r[n][1], '{:.2f}')} / {cell(r[n][3], '{:.2f}')}"
                                                       for n in present) + " |")

    dec = {int(b): {int(T): r for T, r in rows.items()} for b, rows in res.get("decode", {}).items()}
    if dec:
        caption("Decode step, one layer, CUDA-graph replay, ms", "decode")
        out.append("| context | " + " | ".join(f"ours b={b} ms | SDPA b={b} ms" for b in dec) + " |")
        out.append("|---" * (2 * len(dec) + 1) + "|")
        for T in sorted(next(iter(dec.values()))):
            out.append(f"| {T // 1024}k | " + " | ".join(f"{dec[b][T][0]:.4f} | {cell(dec[b][T][1], '{:.4f}')}"
                                                       for b in dec) + " |")

    if res.get("decode_8b"):
        history = "/".join(sorted({str(r.get("history")) for rows in res["decode_8b"].values() for r in rows.values()}))
        caption("Decode, attention of an 8B-shaped model (32 layers), one CUDA graph per step, "
                f"after a {history}-token history", "decode_8b")
        out.append("| config | batch | attention step ms | attention tokens/s | kernels step ms "
                   "| kernels tokens/s | state GiB |")
        out.append("|---" * 7 + "|")
        for name, rows in res["decode_8b"].items():
            for b, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
                cells = (["OOM"] * 5 if r.get("oom") else
                         [f"{r['attention_ms']:.2f}", f"{r['attention_tokens_per_s']:,.0f}", f"{r['kernel_ms']:.2f}",
                          f"{r['kernel_tokens_per_s']:,.0f}", f"{r['state_gib']:.1f}"])
                out.append(f"| {LABELS.get(name, name)} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(out[1:])


def plot(path: str, docs: str) -> None:
    """Figures into docs/figures/ and markdown tables on stdout."""
    res = json.loads(Path(path).read_text())
    figures(res, docs)
    print(tables(res))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default=".")
    r.add_argument("--max-len", type=int, default=LENGTHS[-1])
    r.add_argument("--parts", default="attention,decode,decode_8b",
                   help="comma-separated parts to measure (attention, decode, decode_8b); the others "
                        "already in OUT/attention_gpu.json are kept")
    r.add_argument("--batches-8b", default="1024,2048", help="decode_8b batch sizes")
    r.add_argument("--history", type=int, default=4096, help="decode_8b: tokens prefilled before the step")
    sub.add_parser("sweep")
    pl = sub.add_parser("plot")
    pl.add_argument("json")
    pl.add_argument("--docs", default="docs")
    return p


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parser().parse_args(argv)
    if a.cmd == "run":
        parts = a.parts.split(",")
        unknown = set(parts) - {"attention", "decode", "decode_8b"}
        if unknown:
            raise SystemExit(f"unknown parts: {sorted(unknown)}")
        run(a.out, [T for T in LENGTHS if T <= a.max_len], parts, [int(b) for b in a.batches_8b.split(",")],
            a.history, " ".join(["python benchmarks/attention_gpu.py", *argv]))
    elif a.cmd == "sweep":
        sweep()
    else:
        plot(a.json, a.docs)


if __name__ == "__main__":
    sys.exit(main())
