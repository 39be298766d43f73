"""Generation throughput: softmax (HF generate + SDPA + KV cache) vs linearized, random weights.

The paper's Figure 8 setting: a Llama-3-8B-shaped model (no download: random weights), batch
sizes up to 2048; tokens/s and peak GPU memory per (model, context, batch), "OOM" where the
batch does not fit. Decoding 4096 tokens at every batch size would take hours of device time,
so each point times `--steps` greedy steps after a prompt of `context` tokens: the softmax
model's step cost grows with its KV cache, so the short context (128, the paper's prompt) and
the long one (4224 = 128 + 4096, where the paper's runs end) bracket its rate over a 4096-token
generation; the linearized model's step cost is flat once its 64-token window is full (shown by
the same two contexts at small batches). Decode rate = batch * steps / (t(steps + 1) - t(1)),
`generate` calls (the shorter of two prefill-only calls), so the prefill is not counted.
`--history synthetic` skips the prefill: each call starts from a cache that already holds
`context - 1` tokens of random content (softmax: K/V of that length; lolcats: a full window and
a random state, `seen` = context - 1), so large batches can be timed at a long context without
prefilling millions of tokens; a decode step's cost depends on the cache's size, not on its
values. Writes OUT/generation.json and OUT/generation.png.

    python benchmarks/generation.py --out OUT                       # 8B shape, GPU
    python benchmarks/generation.py --out OUT --contexts 4224 --history synthetic
    python benchmarks/generation.py --out OUT --tiny --device cpu   # smoke test of the script
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

from lolcats_core import LinearizeConfig, linearize
from lolcats_core.attention import LolcatsAttention
from lolcats_core.cache import hybrid_cache_layer

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=16384)
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096)


def build(kind: str, shape: dict, dtype, device, lin: LinearizeConfig) -> torch.nn.Module:
    """Random-weight model of `shape`; `lolcats` linearizes every layer with `lin`."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    # to_empty left the non-persistent RoPE frequencies uninitialised: rebuild the module
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config).to(device)
    if kind == "lolcats":
        linearize(model, lin)
        model.to(device=device, dtype=dtype)
    return model.eval()


def synthetic_cache(model, batch: int, length: int) -> DynamicCache:
    """A cache holding `length` tokens of random content for every layer of `model`."""
    cache = DynamicCache(config=model.config)
    p = next(model.parameters())
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if isinstance(attn, LolcatsAttention):
            state = hybrid_cache_layer(cache, i)
            state.allocate(batch, attn.num_kv_heads, attn.key_heads, attn.window, attn.head_dim,
                           attn.feature_dim, p.dtype, p.device)
            for t in (state.win_k, state.win_v):
                t.normal_()
            state.win_valid.fill_(True)
            state.S.uniform_(0, 1)
            state.z.uniform_(1, 2)
            state.seen = length
        else:
            shape = (batch, model.config.num_key_value_heads, length, model.config.head_dim)
            cache.update(torch.randn(shape, dtype=p.dtype, device=p.device),
                         torch.randn(shape, dtype=p.dtype, device=p.device), i)
    return cache


def _generate_seconds(model, ids, new: int, device, synthetic: bool = False) -> float:
    """Seconds of one greedy `generate` of `new` tokens after `ids` (B, T); with `synthetic`,
    the first T - 1 tokens come from a `synthetic_cache` built before the clock starts."""
    cache = synthetic_cache(model, ids.shape[0], ids.shape[1] - 1) if synthetic else None
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0, past_key_values=cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(model, batch: int, context: int, steps: int, device, synthetic: bool = False) -> dict:
    """Decode tokens/s of `steps` greedy steps after a `context`-token prompt (or a synthetic
    history of that length), and peak memory."""
    ids = torch.randint(3, model.config.vocab_size, (batch, context), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        # the first prefill at a new (batch, context) may compile kernel variants: time the second
        prefill = min(_generate_seconds(model, ids, 1, device, synthetic) for _ in range(2))
        total = _generate_seconds(model, ids, steps + 1, device, synthetic)
    except torch.OutOfMemoryError:
        return {"batch": batch, "context": context, "oom": True}
    except RuntimeError as err:  # recorded, so that one failing point does not lose the others
        return {"batch": batch, "context": context, "oom": False, "error": str(err)[:300]}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"batch": batch, "context": context, "history": "synthetic" if synthetic else "prefill",
            "oom": False, "prefill_s": round(prefill, 3),
            "decode_s": round(total - prefill, 3), "tokens_per_s": round(batch * steps / (total - prefill), 1),
            "peak_gib": peak and round(peak, 2)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines = sorted({(r["model"], r["context"]) for r in results})
    for i, (kind, context) in enumerate(lines):
        rows = [r for r in results if (r["model"], r["context"]) == (kind, context)]
        ok = [r for r in rows if "tokens_per_s" in r]
        style = "-" if kind == "lolcats" else "--"
        ax.plot([r["batch"] for r in ok], [r["tokens_per_s"] for r in ok], style, marker="o",
                color=f"C{i}", label=f"{kind}, context {context}")
        for r in rows:
            if r["oom"]:
                ax.plot([r["batch"]], [ok[-1]["tokens_per_s"] if ok else 1], "x", color=f"C{i}", ms=10)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="generated tokens/s",
           title="8B-shaped decode throughput (x: out of memory)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="2-layer model instead of the 8B shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--contexts", default="128,4224", help="prompt lengths the decode rate is measured after")
    ap.add_argument("--steps", type=int, default=64, help="decode steps timed per point")
    ap.add_argument("--batches", default="1,16,64,128,256,512,1024,2048")
    ap.add_argument("--long-batch-cap", type=int, default=64,
                    help="linearized model: largest batch measured at contexts above 1024 (its step cost "
                         "does not depend on the context; prefilling 2048 x 4224 tokens only costs time)")
    ap.add_argument("--history", choices=["prefill", "synthetic"], default="prefill",
                    help="how the context reaches the cache: a real prefill, or random content (see above)")
    ap.add_argument("--models", default="softmax,lolcats")
    ap.add_argument("--feature-dim", type=int, default=64)
    ap.add_argument("--per-head-key-maps", action="store_true",
                    help="one key feature map per query head: 4x the decode state of the default "
                         "(one per KV group; 72.5 vs 18 MiB per sequence at the 8B shape)")
    args = ap.parse_args()
    lin = LinearizeConfig(window=64, feature_dim=args.feature_dim, share_key_map=not args.per_head_key_maps)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for kind in args.models.split(","):
        model = build(kind, TINY if args.tiny else LLAMA3_8B, dtype, device, lin)
        measure(model, 2, 16, 2, device)  # warm-up: kernel compilation, cuBLAS handles
        for context in map(int, args.contexts.split(",")):
            for batch in map(int, args.batches.split(",")):
                if (kind == "lolcats" and context > 1024 and batch > args.long_batch_cap
                        and args.history == "prefill"):
                    break
                row = {"model": kind, **measure(model, batch, context, args.steps, device,
                                                args.history == "synthetic")}
                results.append(row)
                print(json.dumps(row), flush=True)
                (out / "generation.json").write_text(json.dumps(
                    {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "args": vars(args), "results": results}, indent=1))
                if row["oom"] or "error" in row:
                    break  # larger batches will not fit (or fail the same way)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    plot(results, out / "generation.png")


if __name__ == "__main__":
    main()
