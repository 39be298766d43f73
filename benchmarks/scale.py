"""Scale rehearsal: a preset's full-size shape, random weights, timed through the real stages.

Builds a randomly initialised model of a preset's shape (`llama3-8b`, `llama3.2-1b`,
`mistral-7b`, `qwen2.5-0.5b`; a config JSON or a model directory) directly on the device in
bf16 (never materialised on the host in fp32), linearizes it with the run config's
`linearize` settings and runs the project's own stage code on random token batches:
stage 1 `lolcats_core.training.attention_transfer`, stage 2 `lolcats_core.lora.add_lora` +
`lolcats_core.training.lora_adjust`, as `lolcats_core.pipeline` calls them (one process),
kernels on (on CUDA; `--kernels torch` for the PyTorch path).

Timing: the batch source (the stages' `BatchSource`) synchronises the device and stamps the
clock when the loop takes the first micro-batch of each optimizer step, so one step's time
covers its forwards, backwards and the optimizer update. The first `--warmup` steps (Triton
compilation, allocator growth; under torchrun, stage 1 adds one per rank for the block-wise
pipeline to fill) are not measured; then `--steps` steps are; the stage then
runs one more step, its held-out evaluation (one micro-batch) and its checkpoint, as a real
run does at the end, outside the measured window. Peak memory is
`torch.cuda.max_memory_allocated` over the whole stage (reset before each stage).

Reported per stage: tokens/s, seconds per optimizer step, peak GPU memory, the projected
wall time of the config's token budget (`stageN.tokens`, rounded down to whole steps as the
pipeline does: projected seconds = tokens / (tokens/s)), and the achieved TFLOP/s against the
GPU's dense bf16 peak (table PEAK_BF16_TFLOPS by device name, or `--peak-tflops`).

Model FLOPs per token (multiply-add = 2 FLOPs; T = seq_len, L layers, n_lin linearized and
n_soft softmax layers; norms, rotary, gates and elementwise work not counted):

    P_layer = d*H*hd + 2*d*Hkv*hd + H*hd*d + 3*d*I      (q, k, v, o and the gated MLP)
    P_head  = V*d;  P_lora = LoRA parameters (r * (in + out) per adapted projection)
    teacher = 2*H*hd*(T+1)                              causal softmax: QK^T and PV, mean key count (T+1)/2
    fm      = 2*hd*f*(H + Hk)                           feature maps of q (H heads) and k (Hk heads)
    core    = 4*H*hd*(w_eff + s_eff) + 2*F*hd*(H + Hk)  window softmax over w_eff keys (+ sinks), linear state
                                                        update (Hk heads) and read-out (H heads), F features
    stage 1 = 2*L*P_layer                               frozen forward of every layer (no output head)
              + n_lin*(teacher + 3*core + 2*fm)         teacher, student forward + backward (inputs detached:
                                                        the feature maps need weight gradients only)
              + n_soft*teacher
    stage 2 = 4*(L*P_layer + P_head*(T-1)/T)            forward + activation gradients through frozen weights
                                                        (no weight gradients); head on every labelled position
              + 6*P_lora                                LoRA forward, activation and weight gradients
              + n_lin*(3*core + 2*fm) + n_soft*3*teacher

Random batches label every token (real ShareGPT rows mask the prompts, so stage 2's output
head costs less on real data). The fp32 feature-map matmuls run on TF32, not bf16, units.

    python benchmarks/scale.py --model llama3-8b --config configs/llama3-8b.yaml --profile gpu --out OUT
    python benchmarks/scale.py --model llama3-8b --micro-batch 8 --grad-accum 1 --out OUT
    python benchmarks/scale.py --model llama3.2-1b --device cpu --tiny --out OUT    # smoke test, seconds
    torchrun --nproc-per-node 2 benchmarks/scale.py --model llama3-8b --config configs/llama3-8b.yaml \
        --profile gpu --out OUT        # stage 1 block-wise, stage 2 DDP (--parallel fsdp: sharded)

Under torchrun, stage 1 splits the layers into one block per rank
(`lolcats_core.training.blockwise`) and every rank runs the whole global step's micro-batches
through its block; stage 2 splits the data (each rank micro-batch x grad_accum per step, the
global step that times the number of ranks). Each rank builds only what its stage needs, as
`lolcats train` under torchrun loads it: for stage 1 its block of layers (and, on the first
block, the embeddings) with random weights, the rest on the meta device; for stage 2 with
--parallel fsdp the whole model on rank 0's host and on the meta device elsewhere (rank 0
broadcasts the shards); with ddp the whole model on every GPU. tokens/s are the whole job's, TFLOP/s per GPU
(the job's over the ranks; the peak is one GPU's); peak memory is the
largest rank's (every rank's in `peak_gpu_memory_bytes_per_rank`); rank 0 writes the results.
"""

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lolcats_core.config import LinearizeConfig  # noqa: E402
from lolcats_core.convert import linearize, linearized_attentions  # noqa: E402
from lolcats_core.distributed import Ranks, join_process_group, torchrun_ranks  # noqa: E402
from lolcats_core.errors import ConfigError  # noqa: E402
from lolcats_core.lora import add_lora, lora_parameter_count  # noqa: E402
from lolcats_core.memory import fit_run_config  # noqa: E402
from lolcats_core.presets import PRESETS, model_config  # noqa: E402
from lolcats_core.run_config import RunConfig, StageConfig, load_run_config  # noqa: E402
from lolcats_core.training import attention_transfer, lora_adjust  # noqa: E402
from lolcats_core.training.blockwise import block_parts, blockwise_attention_transfer  # noqa: E402
from lolcats_core.training.data_parallel import data_parallel_lora_adjust  # noqa: E402
from lolcats_core.training.execution import stage2_execution  # noqa: E402
from lolcats_core.training.sharded import sharded_lora_adjust  # noqa: E402
from lolcats_core.weights import empty_model  # noqa: E402

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name();
# the first match wins (more specific names first).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM, "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)
# --tiny: the preset's architecture at a size a CPU runs in seconds
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512)
TINY_SIZES = dict(micro_batch=1, seq_len=128, grad_accum=2)


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The device's dense bf16 peak: `override` if given, else the table's first match, else None."""
    if override is not None:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def shape_of(hf_cfg) -> dict:
    """The sizes the FLOP count needs, from a HF config."""
    heads = hf_cfg.num_attention_heads
    return {
        "model_type": hf_cfg.model_type,
        "layers": hf_cfg.num_hidden_layers,
        "hidden": hf_cfg.hidden_size,
        "intermediate": hf_cfg.intermediate_size,
        "heads": heads,
        "kv_heads": getattr(hf_cfg, "num_key_value_heads", None) or heads,
        "head_dim": getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // heads,
        "vocab": hf_cfg.vocab_size,
    }


def _mean_window_keys(T: int, w: int) -> float:
    """Mean over positions t = 1..T of the keys in a causal window of w tokens (min(t, w))."""
    if w <= 0:
        return 0.0
    w = min(w, T)
    return (w * (w + 1) / 2 + (T - w) * w) / T


def flops_per_token(shape: dict, lin: LinearizeConfig, n_lin: int, seq_len: int, lora_params: int) -> dict:
    """Model FLOPs per token of stage 1 and stage 2 (the module docstring's formula)."""
    d, H, Hkv, hd = shape["hidden"], shape["heads"], shape["kv_heads"], shape["head_dim"]
    L, T = shape["layers"], seq_len
    n_soft = L - n_lin
    p_layer = d * H * hd + 2 * d * Hkv * hd + H * hd * d + 3 * d * shape["intermediate"]
    p_head = shape["vocab"] * d
    Hk = Hkv if lin.share_key_map else H
    if lin.feature_map == "elu1":
        fm, F = 0, hd
    else:
        fm, F = 2 * hd * lin.feature_dim * (H + Hk), (2 if lin.feature_map == "hedgehog" else 1) * lin.feature_dim
    w_eff = _mean_window_keys(T, lin.window)
    s_eff = lin.sinks * max(0, T - lin.window) / T if lin.linear else 0.0
    core = 4 * H * hd * (w_eff + s_eff) + (2 * F * hd * (H + Hk) if lin.linear else 0)
    teacher = 2 * H * hd * (T + 1)
    stage1 = 2 * L * p_layer + n_lin * (teacher + 3 * core + 2 * fm) + n_soft * teacher
    stage2 = (4 * (L * p_layer + p_head * (T - 1) / T) + 6 * lora_params
              + n_lin * (3 * core + 2 * fm) + n_soft * 3 * teacher)
    return {"1": stage1, "2": stage2}


def random_batches(vocab: int, micro_batch: int, seq_len: int, seed: int, clock=None):
    """A `BatchSource` of random tokens (every token labelled), endless in every epoch;
    `clock(position)` is called before each micro-batch is handed out."""
    def source(epoch: int):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        position = 0
        while True:
            if clock is not None:
                clock(position)
            ids = torch.randint(0, vocab, (micro_batch, seq_len), generator=gen)
            yield {"input_ids": ids, "labels": ids.clone()}
            position += 1
    return source


class StepClock:
    """Stamps the time (after a device sync) when the first micro-batch of a step is taken."""

    def __init__(self, grad_accum: int, device: torch.device):
        self.grad_accum, self.device, self.stamps = grad_accum, device, []

    def __call__(self, position: int) -> None:
        if position % self.grad_accum == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stamps.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def load_config(args) -> tuple[RunConfig, str]:
    """The run config (and its path): --config, else configs/<preset>.yaml."""
    path = args.config
    if path is None:
        if args.model not in PRESETS or not (ROOT / "configs" / f"{args.model}.yaml").exists():
            raise ConfigError(f"no shipped config for {args.model!r}: give --config configs/X.yaml")
        path = ROOT / "configs" / f"{args.model}.yaml"
    cfg = load_run_config(path, profile=args.profile, overrides=args.set or [])
    return cfg, str(Path(path))


def hf_config(model: str, tiny: bool):
    """HF config of a preset, config JSON file or model directory; `tiny` shrinks it."""
    if model.endswith(".json") and Path(model).is_file():
        cfg = AutoConfig.for_model(**json.loads(Path(model).read_text()))
    else:
        cfg = model_config(model)
    if tiny:
        data = cfg.to_dict()
        for key in ("layer_types", "max_window_layers", "_name_or_path", "transformers_version",
                    "bos_token_id", "eos_token_id", "pad_token_id"):
            data.pop(key, None)
        data.update(TINY_SHAPE)
        cfg = AutoConfig.for_model(**data)
    return cfg


def softmax_layers_for(lin: LinearizeConfig, num_layers: int) -> tuple[LinearizeConfig, str | None]:
    """"retrieval:K" is measured on the teacher's real weights: random weights have no needle,
    so K evenly spaced layers (the same cost) stand in for them."""
    k = lin.retrieval_layers()
    if k is None:
        return lin, None
    layers = sorted({int(i * num_layers / k) for i in range(k)})
    return replace(lin, softmax_layers=layers), f"softmax_layers {lin.softmax_layers!r}: layers {layers} stand in"


def parameter_count(hf_cfg, dtype) -> int:
    """Parameters of the base model, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    return sum(p.numel() for p in model.parameters())


def build(hf_cfg, lin: LinearizeConfig, device: torch.device, dtype, seed: int):
    """The random model, created on `device` in `dtype` (its default init runs there), linearized."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(hf_cfg), dtype=dtype)  # linearize marks it
    linearize(model, lin)
    return model


def _empty(hf_cfg, dtype):
    """The model of `hf_cfg` on the meta device (`weights.empty_model`), on a copy of the config,
    which `linearize` marks."""
    return empty_model(copy.deepcopy(hf_cfg), dtype)


def _random_init(module: torch.nn.Module, std: float) -> None:
    """Weights of a module materialised from the meta device: matrices N(0, std), norm weights
    1, biases 0 (the model's default init)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def build_rank_block(hf_cfg, lin: LinearizeConfig, ranks: Ranks, dtype, seed: int):
    """Stage 1 under torchrun: the model on the meta device but for this rank's block of decoder
    layers and, on the first block, the embeddings, created with random weights on the host
    (what `load_rank_block` reads from the weight files), linearized."""
    model = _empty(hf_cfg, dtype)
    torch.manual_seed(seed + ranks.rank)
    for part in block_parts(model, lin, ranks):
        part.to_empty(device="cpu")
        _random_init(part, hf_cfg.initializer_range)
    linearize(model, lin)
    return model


def build_sharded(hf_cfg, lin: LinearizeConfig, ranks: Ranks, dtype, seed: int):
    """Stage 2 with FSDP2: the whole random model on rank 0's host, the structure alone on the
    meta device elsewhere (`sharded_lora_adjust` broadcasts rank 0's weights shard by shard)."""
    if ranks.is_main:
        return build(hf_cfg, lin, torch.device("cpu"), dtype, seed)
    model = _empty(hf_cfg, dtype)
    linearize(model, lin)
    for attention in linearized_attentions(model):
        attention.to("meta")  # the feature maps too: rank 0 has their values
    return model


def build_for_stage(number: int, hf_cfg, lin: LinearizeConfig, args, ranks: Ranks | None, device, dtype):
    """The model stage `number` starts from on this rank (module docstring)."""
    if ranks is None or (number == 2 and args.parallel == "ddp"):
        return build(hf_cfg, lin, device, dtype, args.seed)
    if number == 1:
        return build_rank_block(hf_cfg, lin, ranks, dtype, args.seed)
    return build_sharded(hf_cfg, lin, ranks, dtype, args.seed)


def _sizes(args, stage: StageConfig, seq_len: int) -> tuple[int, int, int]:
    tiny = TINY_SIZES if args.tiny else {}
    mb = args.micro_batch or tiny.get("micro_batch") or stage.batch_size
    accum = args.grad_accum or tiny.get("grad_accum") or stage.train.grad_accum
    return mb, args.seq_len or tiny.get("seq_len") or seq_len, accum


def _free(device: torch.device) -> None:
    """Return the memory of a dropped model (host and GPU) before the next one is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_stage(number: int, model, args, cfg: RunConfig, vocab: int, device: torch.device, work: Path,
              ranks: Ranks | None = None):
    """Run stage `number` through the project's stage code; returns (model, timing record).

    Under torchrun (`ranks`): stage 1 block-wise (every rank runs every micro-batch through its
    block of layers), stage 2 data parallel (`--parallel ddp`) or sharded (`fsdp`), each rank
    taking micro-batch x grad_accum of the global step's micro-batch x grad_accum x ranks.
    Seconds per step are the slowest rank's mean.
    """
    stage = cfg.stage1 if number == 1 else cfg.stage2
    mb, seq_len, accum = _sizes(args, stage, cfg.data.seq_len)
    world = ranks.world_size if ranks is not None and number == 2 else 1  # data-parallel ranks
    # block-wise, rank r starts r steps after rank 0 and each pair of ranks opens its NCCL
    # point-to-point channel on its first message: those steps are not measured either
    warmup = args.warmup + (ranks.world_size if number == 1 and ranks is not None else 0)
    total = warmup + args.steps + 1  # the last step closes the measured window
    train_cfg = replace(stage.train, max_steps=total, eval_every=total, grad_accum=accum)
    clock = StepClock(accum * world, device)  # a rank's step spans accum x ranks positions of the stream
    batches = random_batches(vocab, mb, seq_len, train_cfg.seed + number, clock)
    eval_batches = [next(iter(random_batches(vocab, mb, seq_len, 10_000 + number)(0)))]
    _reset_memory(device)
    start = time.perf_counter()
    if number == 1 and ranks is not None:
        blockwise_attention_transfer(model, ranks, batches, eval_batches, train_cfg, work / "stage1", device)
    elif number == 1:
        attention_transfer(model, batches, eval_batches, train_cfg, work / "stage1")
    else:
        model = add_lora(model.to(device) if args.parallel == "ddp" else model, stage.lora)
        if ranks is None:
            lora_adjust(model, batches, eval_batches, train_cfg, work / "stage2")
        elif args.parallel == "fsdp":
            sharded_lora_adjust(model, ranks, batches, eval_batches, train_cfg, work / "stage2", device)
        else:
            with stage2_execution(model, train_cfg):
                data_parallel_lora_adjust(model, ranks, batches, eval_batches, train_cfg, work / "stage2")
    wall = time.perf_counter() - start
    times = clock.step_seconds()[warmup:warmup + args.steps]
    tokens_per_step = mb * seq_len * accum * world
    seconds_per_step = max(_gathered(sum(times) / len(times), ranks))
    tokens_per_s = tokens_per_step / seconds_per_step
    steps_for = replace(stage, batch_size=mb, train=replace(stage.train, grad_accum=accum)).steps_for(seq_len, world)
    budget = steps_for * tokens_per_step
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    peaks = _gathered(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None, ranks)
    record = {
        "stage": number, "micro_batch": mb, "seq_len": seq_len, "grad_accum": accum,
        "tokens_per_step": tokens_per_step, "warmup_steps": warmup, "steps": len(times),
        "step_seconds": [round(t, 6) for t in times], "seconds_per_step": seconds_per_step,
        "median_seconds_per_step": max(_gathered(statistics.median(times), ranks)),
        "tokens_per_s": tokens_per_s, "stage_wall_seconds": round(wall, 3),
        "peak_gpu_memory_bytes": max(peaks) if peaks[0] is not None else None,
        "peak_gpu_memory_bytes_per_rank": peaks,
        "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
        "trainable_parameters": trainable,
        "budget_tokens_config": stage.tokens, "budget_steps": steps_for, "budget_tokens": budget,
        "projected_seconds": budget / tokens_per_s,
    }
    return model, record


def _gathered(value, ranks: Ranks | None) -> list:
    """[value of every rank] (all ranks receive it), or [value] for a single process."""
    if ranks is None:
        return [value]
    values: list = [None] * ranks.world_size
    torch.distributed.all_gather_object(values, value)
    return values


@contextlib.contextmanager
def shared_work(folder: str | None, ranks: Ranks | None):
    """A temporary folder for the stages' trainer states, the same on every rank (rank 0 makes
    it, writes the checkpoints and removes it once every rank is done)."""
    if ranks is None:
        with tempfile.TemporaryDirectory(prefix="scale-", dir=folder) as work:
            yield Path(work)
        return
    path = [tempfile.mkdtemp(prefix="scale-", dir=folder) if ranks.is_main else None]
    torch.distributed.broadcast_object_list(path, src=0)
    try:
        yield Path(path[0])
    finally:
        torch.distributed.barrier()
        if ranks.is_main:
            shutil.rmtree(path[0], ignore_errors=True)


def run(args) -> dict:
    """The rehearsal: build, linearize, run the stages; returns the JSON record."""
    cfg, config_path = load_config(args)
    args.model = args.model or cfg.model
    ranks = torchrun_ranks()
    device = torch.device(join_process_group(ranks, args.device) if ranks is not None else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible (the CPU smoke test: --device cpu --tiny)")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as lolcats_core.pipeline._device on CUDA
    # micro-batches ("auto") and stage-2 checkpointing for this device, as the pipeline decides them
    cfg, fits = fit_run_config(replace(cfg, model=args.model) if args.model in PRESETS else cfg,
                               torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    hf_cfg = hf_config(args.model, args.tiny)
    shape = shape_of(hf_cfg)
    lin, note = softmax_layers_for(cfg.linearize, shape["layers"])
    params = parameter_count(hf_cfg, dtype)
    weight_bytes = params * torch.finfo(dtype).bits // 8
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if device.type == "cuda" and args.parallel == "ddp":
        total_memory = torch.cuda.get_device_properties(device).total_memory
        if weight_bytes > 0.9 * total_memory:
            raise ConfigError(
                f"{args.model}: {weight_bytes / 2**30:.0f} GiB of {dtype} weights do not fit one {device_name} "
                f"({total_memory / 2**30:.0f} GiB): --parallel fsdp under torchrun (lolcats plan --model {args.model} "
                "--gpus N)")
    elif weight_bytes > 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
        raise ConfigError(f"{args.model}: {weight_bytes / 2**30:.1f} GiB of {dtype} weights on the CPU: "
                          "run it on a GPU, or add --tiny for the CPU smoke test")
    stages = sorted({int(s) for s in args.stages.split(",")})

    kernels_env = os.environ.get("LOLCATS_KERNELS")
    os.environ["LOLCATS_KERNELS"] = args.kernels  # read by the kernel dispatcher at every call
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)  # the dispatcher's fallback warnings
            structure = _empty(hf_cfg, dtype)
            linearize(structure, lin)
            n_lin = len(linearized_attentions(structure))
            lora_params = lora_parameter_count(structure, cfg.stage2.lora)
            records, model, loaded_bytes = {}, None, None
            with shared_work(args.work, ranks) as work:
                for number in stages:
                    if model is None or ranks is not None:  # one process: both stages on one model
                        model = None
                        _free(device)
                        model = build_for_stage(number, hf_cfg, lin, args, ranks, device, dtype)
                        if loaded_bytes is None and device.type == "cuda":
                            loaded_bytes = torch.cuda.memory_allocated(device)
                    built = _gathered(sum(p.numel() for p in model.parameters() if not p.is_meta), ranks)
                    model, records[str(number)] = run_stage(number, model, args, cfg, shape["vocab"], device,
                                                            work, ranks)
                    records[str(number)]["built_parameters_per_rank"] = built
    finally:
        if kernels_env is None:
            os.environ.pop("LOLCATS_KERNELS", None)
        else:
            os.environ["LOLCATS_KERNELS"] = kernels_env
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    fallbacks = [m for m in messages if "lolcats_kernels" in m]

    peak = peak_tflops(device_name, args.peak_tflops)
    for number, rec in records.items():
        flops = flops_per_token(shape, lin, n_lin, rec["seq_len"], lora_params)[number]
        rec["flops_per_token"] = flops
        world = ranks.world_size if ranks is not None else 1  # every rank works in both stages
        rec["achieved_tflops_per_gpu"] = flops * rec["tokens_per_s"] / world / 1e12
        rec["fraction_of_peak"] = rec["achieved_tflops_per_gpu"] / peak if peak else None
    return {
        "benchmark": "scale", "command": args.command, "device": str(device), "device_name": device_name,
        "ranks": ranks.world_size if ranks is not None else 1,
        "stage2_parallel": args.parallel if ranks is not None else None,
        "peak_bf16_tflops": peak, "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": __import__("transformers").__version__,
        "kernels": "triton" if device.type == "cuda" and args.kernels == "triton" else "torch",
        "kernel_fallbacks": fallbacks,
        "model": args.model, "tiny": args.tiny, "config": config_path, "profile": args.profile,
        "dtype": str(dtype).removeprefix("torch."), "shape": shape, "parameters": params,
        "weight_bytes": weight_bytes, "allocated_after_build_bytes": loaded_bytes,
        "linearize": lin.to_dict(), "linearized_layers": n_lin, "note": note, "lora_parameters": lora_params,
        "stages": records, "fits": {n: vars(f) for n, f in fits.items()},
        "projected_total_seconds": sum(r["projected_seconds"] for r in records.values()),
        "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def markdown(res: dict) -> str:
    """The result as a markdown table under a line naming the device and the command."""
    ranks = f", {res['ranks']} ranks (stage 2 {res['stage2_parallel']})" if res["ranks"] > 1 else ""
    lines = [f"**Scale rehearsal, {res['model']}{' (tiny)' if res['tiny'] else ''}** ({res['device_name']}{ranks}, "
             f"{res['dtype']}, kernels {res['kernels']}, torch {res['torch']}; `{res['command']}`):", "",
             "| stage | micro-batch x seq x accum | s/step | tokens/s | peak memory | TFLOP/s per GPU | of peak "
             "| budget | projected |",
             "|---|---|---|---|---|---|---|---|---|"]
    for number, r in res["stages"].items():
        share = "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.0f}%"
        lines.append(
            f"| {number} | {r['micro_batch']} x {r['seq_len']} x {r['grad_accum']} | {r['seconds_per_step']:.3f} "
            f"| {r['tokens_per_s']:,.0f} | {_gib(r['peak_gpu_memory_bytes'])} | {r['achieved_tflops_per_gpu']:.1f} "
            f"| {share} | {r['budget_tokens'] / 1e6:.1f}M | {_duration(r['projected_seconds'])} |")
    lines += ["", f"Projected total: {_duration(res['projected_total_seconds'])}."]
    if res["kernel_fallbacks"]:
        lines += ["", "Kernel fallbacks: " + "; ".join(res["kernel_fallbacks"])]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="preset, config JSON or model directory (default: the config's model)")
    p.add_argument("--config", help="run config YAML (default: configs/<preset>.yaml)")
    p.add_argument("--profile", help="profile of the run config, e.g. gpu")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="run-config override (repeatable)")
    p.add_argument("--micro-batch", type=int, help="rows per micro-batch, both stages (default: the config's)")
    p.add_argument("--seq-len", type=int, help="tokens per row (default: data.seq_len)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default: the config's)")
    p.add_argument("--steps", type=int, default=5, help="measured optimizer steps per stage")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps before them")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--kernels", choices=["triton", "torch"], default="triton",
                   help="Triton kernels (CUDA) or the PyTorch path (LOLCATS_KERNELS=torch)")
    p.add_argument("--tiny", action="store_true",
                   help=f"the architecture at a tiny size {TINY_SHAPE}, sizes {TINY_SIZES} unless given")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from PEAK_BF16_TFLOPS)")
    p.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                   help="stage 2 under torchrun: every weight on every GPU (ddp) or sharded (fsdp; the model "
                        "is built on the host)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="folder for the stages' trainer checkpoints (a temporary folder under it)")
    p.add_argument("--out", default=".", help="writes OUT/scale-<model>.json and .md")
    return p


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    if args.model is None and args.config is None:
        parser().error("give --model PRESET and/or --config configs/X.yaml")
    for name in ("micro_batch", "seq_len", "grad_accum", "steps"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser().error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        parser().error("--warmup must be >= 0")
    if not set(args.stages.split(",")) <= {"1", "2"}:
        parser().error(f"--stages takes 1, 2 or 1,2, got {args.stages!r}")
    args.command = "python benchmarks/scale.py " + shlex.join(argv)
    res = run(args)
    if torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return res
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "scale-" + Path(res["model"]).name.removesuffix(".json") + ("-tiny" if res["tiny"] else "")
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    table = markdown(res)
    (out / f"{stem}.md").write_text(table)
    print(table)
    return res


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"error: {e}")
