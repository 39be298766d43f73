"""A stage on a tiny random model, single-process or under torchrun (tests/core/test_distributed.py).

    python tests/distributed_worker.py STAGE OUT [--steps N] [--grad-accum G]
    torchrun --nproc-per-node 2 tests/distributed_worker.py STAGE OUT ...
    torchrun --nproc-per-node 2 tests/distributed_worker.py STAGE[:G],STAGE[:G],... OUT ...

STAGE is `transfer` (stage 1, block-wise under torchrun), `lora` (stage 2, data parallel),
`fsdp` (stage 2, data parallel with the weights sharded; single-process: as `lora`) or
`memory` (under torchrun only: each rank loads what stage 1 and sharded stage 2 load, and
trains nothing). The model comes from files, as in the pipeline: OUT/base (4 layers, random,
seed 0) and OUT/stage1 (it linearized, untrained: the stage-1 checkpoint stage 2 starts from),
written by the first process. Rank 0 (or the single process) writes OUT/params.safetensors
(the trained parameters, and for stage 1 the held-out MSE per layer as `mse.<layer>`, for
stage 2 the held-out loss of every evaluation as `eval_loss`); `memory` has every rank r
write OUT/materialised-<r>.json instead: the parameters its models held, by part.
Several stages (comma-separated, each with its own gradient accumulation G, else --grad-accum)
run one after another in one launch and one process group, each from its own files, as above
but under OUT/<STAGE>/ (torchrun's start-up is most of a tiny stage's time).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_tiny_config  # noqa: E402
from lolcats_core import LinearizeConfig, LoraSettings, add_lora, linearize, load_base_model  # noqa: E402
from lolcats_core.checkpoint import load_linearized  # noqa: E402
from lolcats_core.checkpoint_save import save_linearized  # noqa: E402
from lolcats_core.distributed import join_process_group, torchrun_ranks  # noqa: E402
from lolcats_core.model_parts import base_model  # noqa: E402
from lolcats_core.training import TrainConfig, attention_transfer, lora_adjust  # noqa: E402
from lolcats_core.training.blockwise import blockwise_attention_transfer, load_rank_block  # noqa: E402
from lolcats_core.training.data_parallel import data_parallel_lora_adjust  # noqa: E402
from lolcats_core.training.sharded import shard, sharded_lora_adjust  # noqa: E402

LIN = LinearizeConfig(window=4, feature_dim=16, softmax_layers=[1])
LORA = LoraSettings(r=4, alpha=8)


def prepare(out: Path, ranks) -> tuple[str, str]:
    """(OUT/base, OUT/stage1), written by rank 0 (or the single process) unless there already."""
    base, stage1 = out / "base", out / "stage1"
    if (ranks is None or ranks.is_main) and not (stage1 / "config.json").exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(make_tiny_config(num_hidden_layers=4)).save_pretrained(base)
        save_linearized(linearize(load_base_model(str(base))[0], LIN), stage1)
    if ranks is not None:
        dist.barrier()
    return str(base), str(stage1)


def materialised(model: torch.nn.Module) -> dict[str, int]:
    """Elements of the parameters a model holds (a sharded one's: this rank's shard; none on
    the meta device), LoRA left out, by part: "model.embed_tokens", "model.layers.<i>", ..."""
    parts: dict[str, int] = {}
    for name, p in base_model(model).named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        if "lora_" not in name and not local.is_meta:
            part = ".".join(name.split(".")[:3 if name.startswith("model.layers.") else 2])
            parts[part] = parts.get(part, 0) + local.numel()
    return parts


def batches(epoch: int, n: int = 8, T: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(1000 + epoch)
    ids = torch.randint(1, 127, (n, 2, T), generator=g)
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


EVAL = batches(-1, n=4)


def stage1_model(base: str, ranks) -> torch.nn.Module:
    """The linearized base model: whole, or on a rank only its block's weights."""
    if ranks is None:
        return linearize(load_base_model(base)[0], LIN)
    return linearize(load_rank_block(base, LIN, ranks, torch.float32)[0], LIN)


def stage2_model(stage1: str, ranks, sharded: bool) -> torch.nn.Module:
    """The stage-1 checkpoint with LoRA: on the meta device on ranks > 0 when `sharded`."""
    model = load_linearized(stage1, device="meta" if sharded and not ranks.is_main else "cpu")
    torch.manual_seed(0)  # LoRA's initialisation (rank 0's, when sharded)
    return add_lora(model, LORA)


def report(out: Path, ranks, **stages: dict) -> None:
    (out / f"materialised-{ranks.rank}.json").write_text(json.dumps(stages))


def memory(out: Path, ranks) -> None:
    """What each rank reads for stage 1, and holds on loading sharded stage 2 and once sharded."""
    base, stage1 = prepare(out, ranks)
    transfer = materialised(load_rank_block(base, LIN, ranks, torch.float32)[0])
    model = stage2_model(stage1, ranks, sharded=True)
    loaded = materialised(model)
    shard(model, ranks, "cpu")
    report(out, ranks, transfer=transfer, fsdp_loaded=loaded, fsdp_sharded=materialised(model))


def run(stage: str, out: Path, steps: int, grad_accum: int, ranks=None) -> None:
    """One stage; `ranks` (torchrun's, process group joined): distributed, else in this process."""
    if stage == "memory":
        return memory(out, ranks)
    base, stage1 = prepare(out, ranks)
    cfg = TrainConfig(lr=1e-2 if stage == "transfer" else 1e-3, max_steps=steps, eval_every=2,
                      grad_accum=grad_accum, plateau_patience=0)
    tensors = {}
    if stage == "transfer":
        model = stage1_model(base, ranks)
        if ranks is None:
            _, mse = attention_transfer(model, batches, EVAL, cfg, out / "trainer")
        else:
            _, mse = blockwise_attention_transfer(model, ranks, batches, EVAL, cfg, out / "trainer", "cpu")
        tensors = {f"mse.{k}": torch.tensor(v, dtype=torch.float64) for k, v in mse.items()}
    else:
        model = stage2_model(stage1, ranks, sharded=stage == "fsdp" and ranks is not None)
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
    parser.add_argument("stages", help="STAGE or STAGE[:G],STAGE[:G],... (STAGE: transfer, lora, fsdp or memory)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    args = parser.parse_args()
    jobs = [(name, int(g) if g else args.grad_accum) for name, _, g in (j.partition(":") for j in args.stages.split(","))]
    if bad := [name for name, _ in jobs if name not in ("transfer", "lora", "fsdp", "memory")]:
        parser.error(f"unknown stage {bad[0]!r}")
    logging.basicConfig(level=logging.INFO)
    ranks = torchrun_ranks()
    if ranks is not None:
        join_process_group(ranks, "cpu")
    for name, grad_accum in jobs:
        run(name, args.out / name if len(jobs) > 1 else args.out, args.steps, grad_accum, ranks)
