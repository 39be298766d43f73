"""CPU benchmark: chunked PyTorch hybrid attention vs naive O(T^2) attention, and decoding.

Measures, on this machine's CPU, forward time and extra peak memory (resident set size above
the inputs, each case in a fresh subprocess) at T = 1k..8k, then the per-token decode time and
state size of a small linearized model against its softmax KV cache as the context grows.
Writes docs/performance.md's CPU section data to docs/bench_cpu.json and prints a table.

    python benchmarks/attention_cpu.py
"""

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

B, H, HKV, D, FEAT, WINDOW = 1, 8, 2, 64, 64, 64
LENGTHS = (1024, 2048, 4096, 8192)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def attention_case(impl: str, T: int) -> dict:
    """Runs in a subprocess: time and extra peak RSS of one forward."""
    from lolcats_kernels import hybrid_attention_chunked, hybrid_attention_naive

    fn = hybrid_attention_chunked if impl == "chunked" else hybrid_attention_naive
    g = torch.Generator().manual_seed(0)
    q, qf = torch.randn(B, H, T, D, generator=g), torch.rand(B, H, T, FEAT, generator=g)
    k, v = torch.randn(B, HKV, T, D, generator=g), torch.randn(B, HKV, T, D, generator=g)
    kf, gamma = torch.rand(B, H, T, FEAT, generator=g), torch.rand(H, generator=g)
    base = _rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        fn(q, k, v, qf, kf, gamma, WINDOW)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"impl": impl, "T": T, "seconds": round(seconds, 3), "extra_peak_mib": round((peak - base) / 2**20, 1)}


def decode_profile() -> list[dict]:
    """Per-token decode time and cache bytes of a small linearized Llama vs its softmax model."""
    from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

    from lolcats_core import LinearizeConfig, linearize

    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384)
    torch.manual_seed(0)
    softmax = AutoModelForCausalLM.from_config(cfg).eval()
    linear = linearize(AutoModelForCausalLM.from_config(cfg).eval(), LinearizeConfig(window=WINDOW))
    rows = []
    for context in (512, 1024, 2048, 4096, 8192):
        ids = torch.randint(0, 1000, (1, context))
        for name, model in (("softmax", softmax), ("lolcats", linear)):
            cache = DynamicCache(config=model.config)
            with torch.no_grad():
                model(ids, past_key_values=cache, use_cache=True)
                nxt = ids[:, -1:]
                start = time.perf_counter()
                steps = 16
                for _ in range(steps):
                    nxt = model(nxt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
                ms = (time.perf_counter() - start) / steps * 1000
            nbytes = sum(layer.nbytes() if hasattr(layer, "nbytes") else
                         layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
            rows.append({"model": name, "context": context, "ms_per_token": round(ms, 2),
                         "cache_mib": round(nbytes / 2**20, 2)})
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(attention_case(sys.argv[2], int(sys.argv[3]))))
        return
    torch.set_num_threads(2)
    results = {"device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
               "torch": torch.__version__, "shape": dict(B=B, H=H, Hkv=HKV, D=D, F=FEAT, window=WINDOW),
               "attention": [], "decode": []}
    for T in LENGTHS:
        for impl in ("chunked", "naive"):
            out = subprocess.run([sys.executable, __file__, "--case", impl, str(T)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results["attention"].append(row)
            print(f"attention {impl:>8} T={T:>5}: {row['seconds']:>7.3f} s, +{row['extra_peak_mib']:>8.1f} MiB")
    for row in decode_profile():
        results["decode"].append(row)
        print(f"decode {row['model']:>8} context={row['context']:>5}: {row['ms_per_token']:>7.2f} ms/token, "
              f"cache {row['cache_mib']:>7.2f} MiB")
    out = Path(__file__).resolve().parent.parent / "docs" / "bench_cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
