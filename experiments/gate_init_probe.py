"""Does the scalar gate learn a decay when it starts from one? Stage 1 on the CPU (docs/results.md).

The trained scalar gate ties plain LoLCATs on Qwen2.5 and its parameters barely move: it
starts at log g = logsigmoid(8) / 16 (g = 0.99998, a half-life of ~33,000 tokens), and Adam
moves the bias by at most the learning rate (0.01) per step, so reaching a decay that matters
(half-life ~600 tokens: bias 4) takes hundreds of steps of one sign. This probe runs the
recipe's stage 1 on SmolLM2-135M (ShareGPT rows of 1024 tokens, every layer linear, window 64)
from several initial biases and prints, per start: held-out attention MSE (mean and the worst
layers), where the biases ended, and the decay the trained gates apply to held-out rows (their
projection of the layer input included): per layer, the median and the 10% shortest half-lives.
A second run with the same arguments reuses the trained stage 1 and only measures.

    python experiments/gate_init_probe.py --out /tmp/gate --starts none,8,4,2   # ~7 min a start on 2 cores
"""

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

import lolcats_core.attention as attention
from lolcats_core.checkpoint import load_linearized
from lolcats_core.convert import linearized_attentions
from lolcats_core.pipeline import attention_transfer_step, prepare_data
from lolcats_core.run_config import load_run_config


def half_life(bias: float) -> float:
    """Tokens until the state's weight halves at gate logit `bias` (the projection's weight at 0)."""
    log_g = -math.log1p(math.exp(-bias)) / attention.GATE_SCALE
    return math.log(0.5) / log_g


def gate_biases(checkpoint: Path) -> dict[int, list[float]]:
    """{layer: the scalar gate's bias per key head} of a stage-1 checkpoint."""
    tensors = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        tensors |= load_file(f)
    out = {}
    for name, t in tensors.items():
        if name.endswith("state_gate.bias"):
            out[int(name.split(".layers.")[1].split(".")[0])] = t.float().tolist()
    return dict(sorted(out.items()))


def gate_half_lives(checkpoint: Path, input_ids: torch.Tensor) -> dict[int, tuple[float, float]]:
    """{layer: (median, 10th percentile) half-life in tokens} of the trained gates' decay over
    every head and token of `input_ids` (B, T)."""
    model = load_linearized(checkpoint).eval()
    seen: dict[int, torch.Tensor] = {}
    for attn in linearized_attentions(model):
        def record(hidden, k, _gate=attn.log_gate, _layer=attn.layer_idx):
            seen[_layer] = _gate(hidden, k)
            return seen[_layer]
        attn.log_gate = record
    with torch.no_grad():
        model(input_ids=input_ids)
    lives = {}
    for layer, log_g in sorted(seen.items()):
        q = torch.quantile(log_g.flatten(), torch.tensor([0.5, 0.1]))
        lives[layer] = (math.log(0.5) / q[0].item(), math.log(0.5) / q[1].item())
    return lives


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--starts", default="none,8,4,2", help="'none' (no gate) or initial gate biases")
    ap.add_argument("--steps", type=int, default=150, help="stage-1 steps of one 1024-token row")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    results = {}
    for start in args.starts.split(","):
        gate = "none" if start == "none" else "scalar"
        if gate == "scalar":
            attention.SCALAR_GATE_BIAS = float(start)
        cfg = load_run_config("configs/smollm2-135m.yaml", "cpu-smoke", [
            f"output_dir={args.out}", f"name=gate-{start}", "data.seq_len=1024",
            f"data.train_tokens={(args.steps + 50) * 1024}", "data.val_tokens=8192",
            f"data.cache_dir={args.out}/data", f"stage1.tokens={args.steps * 1024}", "stage1.batch_size=1",
            "stage1.eval_every=50", "stage1.plateau_patience=100", "linearize.softmax_layers=[]",
            f"linearize.gate={gate}", *args.overrides])
        data = prepare_data(cfg)
        record = attention_transfer_step(cfg, data)
        mse = {int(k): v for k, v in record["layer_mse"].items()}
        worst = sorted(mse, key=mse.get, reverse=True)[:4]
        result = {"mean_mse": sum(mse.values()) / len(mse), "worst": {k: mse[k] for k in worst},
                  "seconds": record["seconds"], "checkpoint": record["model"]}
        if gate == "scalar":
            biases = gate_biases(Path(record["model"]))
            flat = [b for heads in biases.values() for b in heads]
            lives = gate_half_lives(Path(record["model"]), torch.tensor(data.validation[:2]["input_ids"]))
            shortest = min(lives, key=lambda layer: lives[layer][1])
            result |= {"bias_min": min(flat), "bias_max": max(flat),
                       "half_life_min": half_life(min(flat)), "half_life_start": half_life(float(start)),
                       "biases": biases, "held_out_half_lives": lives, "shortest_layer": shortest}
        results[start] = result
        print(f"start {start}: held-out MSE {result['mean_mse']:.5f}, worst layers "
              + ", ".join(f"{k}: {v:.4f}" for k, v in result["worst"].items())
              + ("" if gate == "none" else
                 f"; biases {result['bias_min']:.2f}..{result['bias_max']:.2f} (half-life from "
                 f"{result['half_life_start']:.0f} to at least {result['half_life_min']:.0f} tokens); on held-out "
                 f"rows the median half-life is {min(v[0] for v in lives.values()):.0f}-"
                 f"{max(v[0] for v in lives.values()):.0f} tokens over the layers, the shortest decile "
                 f"{lives[shortest][1]:.0f} (layer {shortest})"), flush=True)
    (Path(args.out) / "gate_init_probe.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
