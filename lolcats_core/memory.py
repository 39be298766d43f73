"""Training memory on one GPU, estimated from the model's shape, and the micro-batch that fits.

`fit_run_config` turns a stage's `micro_batch: auto` and stage 2's
`gradient_checkpointing: auto` into numbers for a GPU of a given memory: the optimizer step
keeps its `batch_size` x `grad_accum` rows, split into the largest micro-batch (a divisor of
the rows) whose estimated peak fits `USABLE` of the GPU. Stage 2 recomputes its layers
(checkpointing) only when that gives a larger micro-batch and the one without stays under
`MIN_MICRO_TOKENS`. On the CPU nothing is estimated: `auto` keeps `batch_size` rows per
micro-batch, without checkpointing. The pipeline runs each stage as `stage_as_run` fits it to
its device and records an "auto" micro-batch beside the stage's checkpoints for its resumption.

A stage's peak = resident + tokens x per-token bytes + fixed bytes. Resident: every weight in
the model's dtype (e bytes) and 16 bytes (fp32 value, gradient, two AdamW moments) per trained
parameter. Per token and decoder layer, what the backward keeps, counted from the code the
stages run on CUDA (d hidden, H / Hkv / Hk query / KV / key-feature heads, D head dim, I MLP
width, F features per head, c = 64 (16-bit) or 32 (fp32) tokens per kernel block):

  stage 2 (LoRA)
    RMSNorm x 2           8d           each keeps its input's fp32 copy
    gated MLP             3eI          SiLU input and output, up projection
    LoRA adapters         4 x input    peft casts each adapted projection's input to the fp32
                                       adapter (e x each distinct input for an fp32 model)
    linearized attention  e(2H+2Hkv)D + eF(H+Hk) + (eFD+4F)Hk/c + 12H
                                       the kernel's q, k, v, o, feature maps, block states
                                       and row statistics
    feature maps          4F(H+Hk)     hedgehog's fp32 softmax (t2r: eF, elu1: eD per head)
    softmax attention     e(2H+2Hkv)D + 4H   flash attention's q, k, v, o and log-sum-exp
  with checkpointing: ed per layer (its input) plus one layer's share above, recomputed.
  Besides: the final norm 4d and the output head 2ed (labelled hidden states, their
  gradient) per token; a working set 4eI per token (one MLP's intermediates and gradients);
  one chunk of logits (`chunked_loss.CHUNK_BYTES` x (1 + e/2)) fixed.

  stage 1 (one layer's graph alive; layers learn one after another within a forward)
    residual stream and RMSNorm       2ed + 8d
    q, k, v and the teacher's output  e(2H+2Hkv)D
    feature-map inputs in fp32        4D(H+Hkv)    kept for the maps' weight gradients
    feature maps, kernel              as stage 2, with contiguous copies of q, k, v
    MSE                               12HD         fp32 copies and difference
    gated MLP                         4eI          intermediates of the frozen forward

Gates, sinks, rotary tables and masks are not counted (under 1% at 8B); compiled layers
(`train.compile`) keep less than counted. The same count with the output head as it was before
chunked cross-entropy (whole fp32 logits, 12 bytes per logit alive when the backward starts)
gives 94.0 GiB for Llama 3 8B's stage 2 at 8 x 1024 tokens; an H200 measured 94 GiB
(`torch.cuda.max_memory_allocated`, benchmarks/scale.py).
"""

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .config import LinearizeConfig
from .lora import LoraSettings
from .run_config import RunConfig, StageConfig
from .training.chunked_loss import CHUNK_BYTES

log = logging.getLogger("lolcats.memory")

USABLE = 0.85  # of the GPU's memory: the CUDA context, the allocator's slack and the estimate's error take the rest
# Below 4096 tokens a micro-batch of an 8B-shaped model leaves the GPU idle part of the time (an
# H200 is busy a quarter of the time at 1 x 1024 tokens, 95% at 8 x 1024), so a micro-batch that
# small is worth recomputing the layers (about half a LoRA step's compute more) to enlarge.
MIN_MICRO_TOKENS = 4096
TRAIN_BYTES = 16  # per trained parameter: fp32 value, gradient and two AdamW moments
SPLIT = "split.json"  # in a stage's trainer folder: the micro-batch an "auto" stage runs with
_LORA_INPUTS = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "attn_out",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp_mid"}


@dataclass(frozen=True)
class Footprint:
    """A stage's estimated memory: `resident` + tokens x `per_token` + `fixed` bytes."""

    resident: int
    per_token: int
    fixed: int = 0

    def peak(self, tokens: int) -> int:
        return self.resident + tokens * self.per_token + self.fixed


@dataclass(frozen=True)
class StageFit:
    """How a stage runs: `micro_batch` rows x `grad_accum` = `rows` per optimizer step."""

    stage: int
    rows: int
    seq_len: int
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    peak_bytes: int | None = None  # estimated; None on the CPU
    device_bytes: int | None = None

    @property
    def fits(self) -> bool:
        return self.device_bytes is None or self.peak_bytes <= USABLE * self.device_bytes

    def describe(self) -> str:
        text = (f"stage {self.stage}: micro-batch {self.micro_batch} x {self.seq_len} tokens, grad_accum "
                f"{self.grad_accum}, checkpointing {'on' if self.checkpointing else 'off'}")
        if self.device_bytes is None:
            return text
        gib = 2**30
        return (f"{text}: ~{self.peak_bytes / gib:.1f} GiB estimated of {USABLE * self.device_bytes / gib:.1f} GiB "
                f"usable ({USABLE:.0%} of {self.device_bytes / gib:.1f} GiB)" + ("" if self.fits else ", DOES NOT FIT"))


def _lora_bytes(targets: list[str], sizes: dict[str, int], e: int) -> int:
    """Per token and layer, the adapters' saved inputs: an fp32 copy per projection when the
    model is 16-bit (peft casts to the fp32 adapter), else each distinct input once."""
    kinds = [_LORA_INPUTS[t] for t in targets if t in _LORA_INPUTS]
    return sum(4 * sizes[k] for k in kinds) if e != 4 else sum(e * sizes[k] for k in set(kinds))


def footprints(model: str, lin: LinearizeConfig, lora: LoraSettings, dtype: torch.dtype) -> dict:
    """{(stage, checkpointing): Footprint} of `model` (preset, directory or hub id) linearized
    with `lin`, trained in `dtype` (the module docstring's count)."""
    from .plan import make_plan
    from .presets import model_config

    hf = model_config(model)
    L, d, I = hf.num_hidden_layers, hf.hidden_size, hf.intermediate_size
    H = hf.num_attention_heads
    Hkv = getattr(hf, "num_key_value_heads", None) or H
    D = getattr(hf, "head_dim", None) or d // H
    if (k := lin.retrieval_layers()) is not None:  # which layers the teacher picks does not change the count
        lin = replace(lin, softmax_layers=sorted({int(i * L / k) for i in range(k)}))
    plan = make_plan(model, lin, lora, dtype=dtype)
    e = torch.finfo(dtype).bits // 8
    c = 64 if e == 2 else 32
    Hk = Hkv if lin.share_key_map else H
    F = {"hedgehog": 2 * lin.feature_dim, "t2r": lin.feature_dim}.get(lin.feature_map, D)
    fm_out = (4 if lin.feature_map == "hedgehog" else e) * F * (H + Hk)
    kernel = e * F * (H + Hk) + (e * F * D + 4 * F) * Hk // c + 12 * H if lin.linear else 0
    qkvo = e * (2 * H + 2 * Hkv) * D
    common = 8 * d + 3 * e * I + _lora_bytes(lora.target_modules, {"attn": d, "attn_out": H * D, "mlp": d,
                                                                   "mlp_mid": I}, e)
    n_lin = len(plan.linearized_layers)
    linear_layer = common + qkvo + kernel + (fm_out if lin.linear else 0)
    softmax_layer = common + qkvo + 4 * H
    layers = n_lin * linear_layer + (L - n_lin) * softmax_layer
    outside = 4 * d + 2 * e * d + 4 * e * I  # final norm, output head, one MLP's working set
    head_chunk = CHUNK_BYTES * (2 + e) // 2
    stage2 = e * plan.total_params + TRAIN_BYTES * plan.stage2_params
    one_layer = max(linear_layer, softmax_layer)
    student = 4 * D * (H + Hkv) + fm_out + kernel + e * (H + 2 * Hkv) * D + e * H * D + 12 * H * D
    stage1_token = 2 * e * d + 8 * d + qkvo + (student if n_lin else 0) + 4 * e * I
    return {
        (1, False): Footprint(e * plan.total_params + TRAIN_BYTES * plan.stage1_params, stage1_token),
        (2, False): Footprint(stage2, layers + outside, head_chunk),
        (2, True): Footprint(stage2, L * e * d + one_layer + outside, head_chunk),
    }


def _choose(stage: StageConfig, number: int, seq_len: int, estimates: dict | None,
            device_bytes: int | None) -> StageFit:
    """The micro-batch and checkpointing of one stage (the module docstring's rule)."""
    rows = stage.batch_size * stage.train.grad_accum
    auto = stage.micro_batch == "auto" and device_bytes is not None
    if stage.micro_batch in (None, "auto"):
        candidates = [m for m in range(rows, 0, -1) if rows % m == 0] if auto else [stage.batch_size]
    else:
        candidates = [stage.micro_batch]
    wanted = stage.train.gradient_checkpointing if number == 2 else False
    modes = [False, True] if wanted == "auto" and device_bytes is not None else [wanted is True]

    def peak(m: int, ckpt: bool) -> int | None:
        return None if device_bytes is None else estimates[(number, ckpt)].peak(m * seq_len)

    def largest_fitting(ckpt: bool) -> int | None:
        if device_bytes is None:
            return candidates[0]
        return next((m for m in candidates if peak(m, ckpt) <= USABLE * device_bytes), None)

    best = {ckpt: largest_fitting(ckpt) for ckpt in modes}
    if len(modes) == 1:
        m, ckpt = best[modes[0]] or candidates[-1], modes[0]
    elif best[False] and (best[False] * seq_len >= MIN_MICRO_TOKENS or best[False] == candidates[0]):
        m, ckpt = best[False], False
    elif best[True] and best[True] > (best[False] or 0):
        m, ckpt = best[True], True
    else:
        m, ckpt = best[False] or candidates[-1], best[False] is None
    return StageFit(number, rows, seq_len, m, rows // m, ckpt, peak(m, ckpt), device_bytes)


def fit_run_config(cfg: RunConfig, device_bytes: int | None) -> tuple[RunConfig, dict[int, StageFit]]:
    """`cfg` with each enabled stage's micro-batch and checkpointing decided for a GPU of
    `device_bytes` (None: the CPU), and how each stage fits.

    In the returned config `batch_size` is the micro-batch, `grad_accum` the micro-batches per
    step, `micro_batch` None and `gradient_checkpointing` true or false.
    """
    estimates = None
    if device_bytes is not None:
        dtype = torch.bfloat16 if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        estimates = footprints(cfg.model, cfg.linearize, cfg.stage2.lora or LoraSettings(), dtype)
    stages, fits = {}, {}
    for number, stage in ((1, cfg.stage1), (2, cfg.stage2)):
        if not stage.enabled:
            stages[number] = stage
            continue
        fit = fits[number] = _choose(stage, number, cfg.data.seq_len, estimates, device_bytes)
        stages[number] = replace(stage, batch_size=fit.micro_batch, micro_batch=None, train=replace(
            stage.train, grad_accum=fit.grad_accum, gradient_checkpointing=fit.checkpointing))
    return replace(cfg, stage1=stages[1], stage2=stages[2]), fits


def device_memory(device: str) -> int | None:
    """Total memory of a CUDA device in bytes; None for the CPU."""
    return torch.cuda.get_device_properties(device).total_memory if str(device).startswith("cuda") else None


def stage_as_run(cfg: RunConfig, number: int, trainer_dir: Path, write: bool = True) -> StageConfig:
    """Stage `number` of `cfg` as it runs on this machine (`fit_run_config` for its device).

    An "auto" micro-batch is recorded in `trainer_dir/SPLIT` (when `write`: the process that
    writes the stage's checkpoints) and a stage resumed from there keeps it, on any GPU: the
    trainer's data position counts micro-batches. The stage's directory is named by the config
    as written, so the same run is found from any machine.
    """
    stage = cfg.stage1 if number == 1 else cfg.stage2
    if stage.micro_batch is None and stage.train.gradient_checkpointing != "auto":
        return stage
    record = Path(trainer_dir) / SPLIT
    if stage.micro_batch == "auto" and record.is_file():
        stage = replace(stage, micro_batch=json.loads(record.read_text())["micro_batch"])
    ran, fits = fit_run_config(replace(cfg, **{f"stage{number}": stage}), device_memory(cfg.resolved_device()))
    fit = fits[number]
    (log.info if fit.fits else log.warning)("%s: %s", cfg.name, fit.describe())
    if write and stage.micro_batch == "auto":
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"micro_batch": fit.micro_batch}))
        tmp.rename(record)
    return ran.stage1 if number == 1 else ran.stage2
