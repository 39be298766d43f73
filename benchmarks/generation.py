"""Generation throughput: softmax (HF generate + SDPA + KV cache) vs linearized, random weights.

The paper's Figure 8 setting: a Llama-3-8B-shaped model (no download: random weights), a
prompt of 128 tokens, N new tokens, batch sizes up to 2048; tokens/s and peak GPU memory per
(model, batch), "OOM" where the batch does not fit. Writes OUT/generation.json and
OUT/generation.png.

    python benchmarks/generation.py --out OUT                       # 8B shape, GPU
    python benchmarks/generation.py --out OUT --tiny --device cpu   # smoke test of the script
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lolcats_core import LinearizeConfig, linearize

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
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config, device=device)
    if kind == "lolcats":
        linearize(model, lin)
        model.to(device=device, dtype=dtype)
    return model.eval()


def measure(model, batch: int, prompt: int, new: int, device) -> dict:
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return {"batch": batch, "oom": True}
    seconds = time.perf_counter() - start
    generated = (out.shape[1] - prompt) * batch
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"batch": batch, "oom": False, "seconds": round(seconds, 2),
            "tokens_per_s": round(generated / seconds, 1), "peak_gib": peak and round(peak, 2)}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind in ("softmax", "lolcats"):
        rows = [r for r in results if r["model"] == kind and not r["oom"]]
        ax.plot([r["batch"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", label=kind)
        for r in results:
            if r["model"] == kind and r["oom"]:
                ax.axvline(r["batch"], ls=":", color="C0" if kind == "softmax" else "C1")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="generated tokens/s",
           title="Generation throughput (dotted: out of memory)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="2-layer model instead of the 8B shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=4096)
    ap.add_argument("--batches", default="1,16,64,256,1024,2048")
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
        for batch in map(int, args.batches.split(",")):
            row = {"model": kind, **measure(model, batch, args.prompt, args.new_tokens, device)}
            results.append(row)
            print(json.dumps(row), flush=True)
            (out / "generation.json").write_text(json.dumps(
                {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "args": vars(args), "results": results}, indent=1))
            if row["oom"]:
                break  # larger batches will not fit either
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    plot(results, out / "generation.png")


if __name__ == "__main__":
    main()
