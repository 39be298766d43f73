"""The linearizing pipeline as separate, resumable steps (the Prefect tasks wrap these).

    prepare_data -> attention_transfer_step -> lora_step -> evaluate_step (teacher and student)

Each step's output directory is named by a fingerprint of its inputs and completed by a
`done.json` marker written last, so a re-run with the same inputs skips finished steps, and
an interrupted step resumes from its trainer checkpoint.

Under torchrun the training steps take the launch's `Ranks`: stage 1 block-wise, stage 2 data
parallel (see `lolcats_core.training.blockwise` / `data_parallel`); rank 0 writes the step's
files and the other ranks return its completion record.
"""

import hashlib
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .checkpoint import load_linearized
from .checkpoint_save import save_linearized
from .convert import attention_parameters, linearize
from .data import PreparedData, data_fingerprint, dataset_dir, make_dataloader, prepare_dataset
from .distributed import Ranks
from .errors import ConfigError
from .evaluation import evaluate_model, plot_attention_mse, resolve_softmax_layers
from .lora import add_lora
from .memory import stage_as_run
from .model_parts import decoder_layers
from .presets import base_model_ref, load_base_model, model_config, resolve
from .run_config import RunConfig
from .training import attention_transfer, lora_adjust
from .training.blockwise import blockwise_attention_transfer, load_rank_block
from .training.data_parallel import data_parallel_lora_adjust
from .training.execution import stage2_execution
from .training.loop import restore_best
from .training.sharded import sharded_lora_adjust

log = logging.getLogger("lolcats.pipeline")
DONE = "done.json"


def fingerprint(*parts) -> str:
    """Stable short hash of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_done(step_dir: Path) -> dict | None:
    """The completion record of a step directory, or None if the step has not finished."""
    marker = Path(step_dir) / DONE
    return json.loads(marker.read_text()) if marker.is_file() else None


def _finish(step_dir: Path, record: dict) -> dict:
    tmp = step_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.rename(step_dir / DONE)
    return record


def _rank_record(step_dir: Path) -> dict:
    """The completion record rank 0 wrote, once it has (every rank calls this)."""
    import torch.distributed as dist

    dist.barrier()
    return read_done(step_dir)


def _batches(data: PreparedData, batch_size: int, seed: int):
    def source(epoch: int):
        for input_ids, labels in make_dataloader(data.train, batch_size, seed=seed, epoch=epoch):
            yield {"input_ids": input_ids, "labels": labels}
    return source


def _eval_batches(data: PreparedData, batch_size: int, limit: int = 16):
    loader = make_dataloader(data.validation, batch_size, shuffle=False, drop_last=False)
    out = []
    for input_ids, labels in loader:
        out.append({"input_ids": input_ids, "labels": labels})
        if len(out) * batch_size >= limit:
            break
    return out


def _tokenizer(cfg: RunConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(cfg.model)[0])


def data_dir(cfg: RunConfig) -> Path:
    """The folder `prepare_data` stores the run's data in, named by its content fingerprint
    (computed without preparing anything)."""
    return dataset_dir(cfg.data, data_fingerprint(cfg.data, _tokenizer(cfg))[0])


def prepare_data(cfg: RunConfig, rebuild: bool = False) -> PreparedData:
    """Tokenize, pack and store the linearizing data (cached by content fingerprint; `rebuild`
    prepares it again all the same)."""
    max_positions = getattr(model_config(cfg.model), "max_position_embeddings", None)
    return prepare_dataset(cfg.data, _tokenizer(cfg), max_positions=max_positions, rebuild=rebuild)


def _device(cfg: RunConfig) -> str:
    """The run's device; on CUDA, fp32 matmuls (the feature maps' projections, trained in fp32)
    use TF32 tensor cores (their share of a step: docs/performance.md)."""
    device = cfg.resolved_device()
    if str(device).startswith("cuda"):
        torch.set_float32_matmul_precision("high")
    return device


def _load_base(cfg: RunConfig):
    model, tokenizer, ref = load_base_model(cfg.model, dtype=cfg.torch_dtype(), device=_device(cfg))
    return model, tokenizer, ref


def stage1_dir(cfg: RunConfig, base_fp: str, data_fp: str) -> Path:
    fp = fingerprint("stage1", base_fp, cfg.linearize.to_dict(), cfg.stage1.artifact_settings(), data_fp)
    return Path(cfg.output_dir) / cfg.name / f"stage1-{fp}"


def attention_transfer_step(cfg: RunConfig, data: PreparedData, on_eval=None, ranks: Ranks | None = None) -> dict:
    """Stage 1 into its fingerprinted directory; returns the completion record.

    ranks: under torchrun, each rank trains one block of layers: it reads only its block's
    weights (`load_rank_block`, on the host) and moves them to the device.
    """
    base_ref = base_model_ref(cfg.model)
    out = stage1_dir(cfg, base_ref.fingerprint, data.fingerprint)
    if (done := read_done(out)) is not None:
        log.info("stage 1 already done: %s", out)
        return done
    if ranks is not None and cfg.linearize.retrieval_layers() is not None:
        raise ConfigError(f"linearize.softmax_layers {cfg.linearize.softmax_layers!r} scores the whole model on "
                          "one device: run `lolcats retrieval-layers` and set the layers it prints, or run "
                          "stage 1 in one process")
    device = _device(cfg)
    if ranks is None:
        model, tokenizer, ref = load_base_model(cfg.model, dtype=cfg.torch_dtype(), device=device)
    else:  # the softmax layers are those of the config (retrieval scores are refused above)
        model, tokenizer, ref = load_rank_block(cfg.model, cfg.linearize, ranks, cfg.torch_dtype(), ref=base_ref)
    out.mkdir(parents=True, exist_ok=True)
    lin, retrieval = resolve_softmax_layers(cfg.linearize, model, tokenizer, cfg.eval.passkey_lengths)
    if retrieval is not None:
        retrieval.plot(out / "retrieval_layers.png", title=f"{cfg.name}: teacher attention on the passkey needle")
        log.info("softmax layers by retrieval score (%s): %s", cfg.linearize.softmax_layers, lin.softmax_layers)
    linearize(model, lin)
    seq_len = cfg.data.seq_len
    start = time.perf_counter()
    if cfg.stage1.enabled:
        stage = stage_as_run(cfg, 1, out / "trainer", write=ranks is None or ranks.is_main)
        train_cfg = replace(stage.train, max_steps=stage.steps_for(seq_len))
        batches = _batches(data, stage.batch_size, train_cfg.seed)
        eval_batches = _eval_batches(data, stage.batch_size)
        if ranks is None:
            result, mse = attention_transfer(model, batches, eval_batches, train_cfg, out / "trainer", on_eval=on_eval)
        else:
            result, mse = blockwise_attention_transfer(model, ranks, batches, eval_batches, train_cfg,
                                                       out / "trainer", device, on_eval=on_eval)
        steps, history = result.steps, result.history
        if ranks is None or ranks.is_main:
            plot_attention_mse(mse, out / "attention_mse.png", title=f"{cfg.name}: held-out attention MSE")
    else:
        steps, history, mse = 0, [], {}
    seconds = time.perf_counter() - start
    if ranks is not None and not ranks.is_main:
        return _rank_record(out)
    save_linearized(model, out / "model", tokenizer=tokenizer)
    tokens = steps * cfg.stage1.batch_size * cfg.stage1.train.grad_accum * seq_len
    record = _finish(out, {
        "step": "attention_transfer", "dir": str(out), "model": str(out / "model"), "steps": steps,
        "tokens": tokens, "seconds": round(seconds, 1), "layer_mse": {str(k): v for k, v in mse.items()},
        "history": history, "base": ref.to_dict(), "data_fingerprint": data.fingerprint,
        "softmax_layers": lin.softmax_layer_indices(len(decoder_layers(model))),
        **({"retrieval": retrieval.to_dict()} if retrieval is not None else {}),
        "trainable_parameters": sum(p.numel() for p in attention_parameters(model)) if cfg.stage1.enabled else 0,
        **({"ranks": ranks.world_size} if ranks is not None else {}),
    })
    return record if ranks is None else _rank_record(out)


def stage2_dir(cfg: RunConfig, stage1: dict, data_parallel: int | None = None) -> Path:
    """Directory of stage 2, named by the stage-1 directory, the stage-2 settings and, on more
    than one rank, the number of data-parallel ranks (it multiplies the global batch; default:
    the config's `distributed.world_size`)."""
    data_parallel = cfg.distributed.world_size if data_parallel is None else data_parallel
    fp = fingerprint("stage2", Path(stage1["dir"]).name, cfg.stage2.artifact_settings(),
                     *([data_parallel] if data_parallel > 1 else []))
    return Path(cfg.output_dir) / cfg.name / f"stage2-{fp}"


def eval_dir(cfg: RunConfig, data: PreparedData, model_path: str | None, name: str) -> Path:
    """Directory of an evaluation, named by the model's weights (the digest of its tensors
    recorded in a checkpoint's config.json, or the base model id for the teacher), the settings
    and the data."""
    if model_path is None:
        model_id = cfg.model
    else:
        weights = json.loads((Path(model_path) / "config.json").read_text())["weights"]
        model_id = weights.get("tensors_sha256", weights["sha256"])
    eval_settings = {**asdict(cfg.eval), "output_dir": None}
    fp = fingerprint("eval", model_id, eval_settings, data.fingerprint)
    return Path(cfg.output_dir) / cfg.name / f"eval-{name}-{fp}"


def lora_step(cfg: RunConfig, data: PreparedData, stage1: dict, on_eval=None, ranks: Ranks | None = None) -> dict:
    """Stage 2 from the stage-1 checkpoint; returns the completion record.

    ranks: under torchrun, data parallel with `stage2.batch_size` x `grad_accum` rows per rank
    and step, every weight on every rank (DDP) or sharded (FSDP2; `distributed.stage2`: rank 0
    loads the model on the host, the others build it on the meta device).
    """
    world = ranks.world_size if ranks is not None else 1
    out = stage2_dir(cfg, stage1, world)
    if (done := read_done(out)) is not None:
        log.info("stage 2 already done: %s", out)
        return done
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    sharded = ranks is not None and cfg.stage2.enabled and _stage2_parallel(cfg, stage1, device) == "fsdp"
    where = ("cpu" if ranks.is_main else "meta") if sharded else device
    model = load_linearized(stage1["model"], dtype=cfg.torch_dtype(), device=where)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stage1["model"])
    seq_len = cfg.data.seq_len
    start = time.perf_counter()
    steps, history = 0, []
    if cfg.stage2.enabled:
        torch.manual_seed(cfg.stage2.train.seed)  # LoRA's initialisation: the same in every process
        model = add_lora(model, cfg.stage2.lora)
        stage = stage_as_run(cfg, 2, out / "trainer", write=ranks is None or ranks.is_main)
        train_cfg = replace(stage.train, max_steps=stage.steps_for(seq_len, world))
        batches = _batches(data, stage.batch_size, train_cfg.seed)
        eval_batches = _eval_batches(data, stage.batch_size)
        if ranks is None:
            result = lora_adjust(model, batches, eval_batches, train_cfg, out / "trainer", on_eval=on_eval)
        elif sharded:
            result = sharded_lora_adjust(model, ranks, batches, eval_batches, train_cfg, out / "trainer", device,
                                         on_eval=on_eval)
        else:
            with stage2_execution(model, train_cfg):
                result = data_parallel_lora_adjust(model, ranks, batches, eval_batches, train_cfg, out / "trainer",
                                                   on_eval=on_eval)
        steps, history = result.steps, result.history
    seconds = time.perf_counter() - start
    if ranks is not None and not ranks.is_main:
        return _rank_record(out)
    if sharded:  # rank 0 saves an unsharded copy: the stage-1 model on the host with the best LoRA
        model = add_lora(load_linearized(stage1["model"], dtype=cfg.torch_dtype(), device="cpu"), cfg.stage2.lora)
        restore_best({n: p for n, p in model.named_parameters() if p.requires_grad}, out / "trainer")
    save_linearized(model, out / "model", tokenizer=tokenizer)
    record = _finish(out, {
        "step": "lora_adjust", "dir": str(out), "model": str(out / "model"), "steps": steps,
        "tokens": steps * cfg.stage2.batch_size * cfg.stage2.train.grad_accum * world * seq_len,
        "seconds": round(seconds, 1), "history": history,
        "trainable_parameters": (sum(p.numel() for p in model.parameters() if p.requires_grad)
                                 if cfg.stage2.enabled else 0),
        **({"ranks": world, "parallel": "fsdp" if sharded else "ddp"} if ranks is not None else {}),
    })
    return record if ranks is None else _rank_record(out)


def _stage2_parallel(cfg: RunConfig, stage1: dict, device: str) -> str:
    """"ddp" or "fsdp" for stage 2 on several ranks (`plan.stage2_parallel`); "auto" measures the
    plan of the model (built on the meta device) against this GPU's memory."""
    from .plan import make_plan, stage2_parallel

    if cfg.distributed.stage2 != "auto" or not device.startswith("cuda"):
        return stage2_parallel(cfg.distributed.stage2, 0, None)
    lin = replace(cfg.linearize, softmax_layers=stage1.get("softmax_layers", cfg.linearize.softmax_layers))
    plan = make_plan(cfg.model, lin, cfg.stage2.lora, dtype=cfg.torch_dtype())
    return stage2_parallel("auto", plan.stage2_rank_bytes, torch.cuda.get_device_properties(device).total_memory)


def evaluate_step(cfg: RunConfig, data: PreparedData, model_path: str | None, name: str) -> dict:
    """Evaluate a checkpoint (or the teacher when `model_path` is None); cached by fingerprint."""
    out = eval_dir(cfg, data, model_path, name)
    if (done := read_done(out)) is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    eval_cfg = replace(cfg.eval, output_dir=str(out))
    if model_path is None:
        model, tokenizer, _ = _load_base(cfg)
    else:
        from transformers import AutoTokenizer

        model = load_linearized(model_path, dtype=cfg.torch_dtype(), device=_device(cfg))
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    with torch.no_grad():
        report = evaluate_model(model, tokenizer, eval_cfg, heldout=data.validation, name=name)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return _finish(out, {"step": "evaluate", "dir": str(out), "name": name, "report": report})
