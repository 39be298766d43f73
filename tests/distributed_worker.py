"""A stage on a tiny random model, single-process or under torchrun (tests/core/test_distributed.py).

    python tests/distributed_worker.py STAGE OUT [--steps N] [--grad-accum G]
    torchrun --nproc-per-node 2 tests/distributed_worker.py STAGE OUT ...

STAGE is `transfer` (stage 1, block-wise under torchrun), `lora` (stage 2, data parallel) or
`fsdp` (stage 2, data parallel with the weights sharded; single-process: as `lora`).
Rank 0 (or the single process) writes OUT/params.safetensors (the trained parameters, and
for stage 1 the held-out MSE per layer as `mse.<layer>`, for stage 2 the held-out loss of
every evaluation as `eval_loss`).
"""

import argparse
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_tiny_config  # noqa: E402
from lolcats_core import LinearizeConfig, LoraSettings, add_lora, linearize  # noqa: E402
from lolcats_core.distributed import join_process_group, torchrun_ranks  # noqa: E402
from lolcats_core.training import TrainConfig, attention_transfer, lora_adjust  # noqa: E402
from lolcats_core.training.blockwise import blockwise_attention_transfer  # noqa: E402
from lolcats_core.training.data_parallel import data_parallel_lora_adjust  # noqa: E402
from lolcats_core.training.sharded import sharded_lora_adjust  # noqa: E402


def tiny_model(layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_tiny_config(num_hidden_layers=layers))
    return linearize(model, LinearizeConfig(window=4, feature_dim=16, softmax_layers=[1]))


def batches(epoch: int, n: int = 8, T: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(1000 + epoch)
    ids = torch.randint(1, 127, (n, 2, T), generator=g)
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


EVAL = batches(-1, n=4)


def run(stage: str, out: Path, steps: int, grad_accum: int) -> None:
    ranks = torchrun_ranks()
    if ranks is not None:
        join_process_group(ranks, "cpu")
    model = tiny_model()
    cfg = TrainConfig(lr=1e-2 if stage == "transfer" else 1e-3, max_steps=steps, eval_every=2,
                      grad_accum=grad_accum, plateau_patience=0)
    tensors = {}
    if stage == "transfer":
        if ranks is None:
            _, mse = attention_transfer(model, batches, EVAL, cfg, out / "trainer")
        else:
            _, mse = blockwise_attention_transfer(model, ranks, batches, EVAL, cfg, out / "trainer", "cpu")
        tensors = {f"mse.{k}": torch.tensor(v, dtype=torch.float64) for k, v in mse.items()}
    else:
        model = add_lora(model, LoraSettings(r=4, alpha=8))
        if ranks is None:
            result = lora_adjust(model, batches, EVAL, cfg, out / "trainer")
        elif stage == "fsdp":
            result = sharded_lora_adjust(model, ranks, batches, EVAL, cfg, out / "trainer", "cpu")
        else:
            result = data_parallel_lora_adjust(model, ranks, batches, EVAL, cfg, out / "trainer")
        tensors["eval_loss"] = torch.tensor([h["eval_score"] for h in result.history], dtype=torch.float64)
    if ranks is None or ranks.is_main:
        # sharded (FSDP) frozen weights are DTensors: compare the LoRA parameters only
        keys = ("lora_",) if stage == "fsdp" else ("feature_map", "window_gate", "sink_logit", "state_gate", "lora_")
        tensors.update({k: v.detach().clone() for k, v in model.state_dict().items() if any(s in k for s in keys)})
        save_file(tensors, out / "params.safetensors")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["transfer", "lora", "fsdp"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    run(args.stage, args.out, args.steps, args.grad_accum)
