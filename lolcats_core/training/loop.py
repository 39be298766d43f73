"""The training loop shared by both stages: steps, evaluation, plateau LR, best keeping, resume.

A stage supplies the trainable parameters, a `step` function (forward + backward of one
micro-batch, returning its metrics) and an `evaluate` function (held-out score, lower is
better). The loop owns the optimizer, the schedule, checkpoints and exact resume: the data
order is a pure function of (seed, epoch), so resuming skips the consumed micro-batches and
continues bit-identically.
"""

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError, LolcatsError
from .state import load_train_state, save_train_state, saved_states, settle_train_state

log = logging.getLogger("lolcats.training")


class NonFiniteLossError(LolcatsError, FloatingPointError):
    """A loss became NaN or inf; the message names the step (and layer) and the last checkpoint."""


@dataclass
class TrainConfig:
    """Optimisation settings of one stage.

    Attributes:
        lr, weight_decay: AdamW settings.
        max_steps: optimizer steps to run (each consumes `grad_accum` micro-batches).
        grad_accum: micro-batches per optimizer step.
        eval_every: steps between held-out evaluations (also the checkpoint cadence).
        plateau_patience, plateau_factor: ReduceLROnPlateau on the held-out score
            (patience < 0 disables it).
        max_grad_norm: clip gradients to this norm (None: no clipping).
        seed: seed of the data order and of any randomness in training.
        gradient_checkpointing: stage 2 recomputes each decoder layer's forward in the backward
            instead of keeping its activations (about half a step's compute more, a fraction of
            the memory); "auto": on when `lolcats_core.memory` (the pipeline's `stage_as_run`)
            finds that the micro-batch would not fit the GPU without it. Stage 1 never needs it
            (one layer's graph is alive at a time).
        compile: run the decoder layers through torch.compile (`training.execution`), fusing
            their elementwise work; the first step compiles (a minute or more per layer kind).
    """

    lr: float = 1e-2
    weight_decay: float = 0.0
    max_steps: int = 100
    grad_accum: int = 1
    eval_every: int = 25
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    max_grad_norm: float | None = None
    seed: int = 0
    gradient_checkpointing: bool | Literal["auto"] = False
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "eval_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"plateau_factor must lie strictly between 0 and 1, got {self.plateau_factor}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be positive or None (no clipping), got {self.max_grad_norm}")
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise ConfigError("gradient_checkpointing must be true, false or auto, got "
                              f"{self.gradient_checkpointing!r}")


@dataclass
class TrainResult:
    """What a stage produced."""

    steps: int
    best_score: float
    best_step: int
    history: list[dict] = field(default_factory=list)
    eval_metrics: dict = field(default_factory=dict)


BatchSource = Callable[[int], Iterable[dict]]  # epoch -> micro-batches, deterministic


def _micro_batches(source: BatchSource, epoch: int, skip: int) -> Iterator[tuple[int, int, dict]]:
    """(epoch, position, batch) forever, starting at `skip` items into `epoch`."""
    while True:
        count = 0
        for pos, batch in enumerate(source(epoch)):
            count += 1
            if pos >= skip:
                yield epoch, pos + 1, batch
        if count == 0:
            raise LolcatsError("the training data yielded no batches")
        epoch, skip = epoch + 1, 0


def non_finite_gradients(params: dict[str, torch.nn.Parameter]) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an inf (one host sync)."""
    named = [(n, p.grad) for n, p in params.items() if p.grad is not None]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(g).all() for _, g in named])
    if bool(finite.all()):
        return []
    return [n for (n, _), ok in zip(named, finite.tolist()) if not ok]


def train_loop(
    name: str,
    params: dict[str, torch.nn.Parameter],
    step: Callable[[dict, float], dict],
    evaluate: Callable[[], tuple[float, dict]],
    batches: BatchSource,
    cfg: TrainConfig,
    out_dir: Path,
    on_eval: Callable[[int, dict], None] | None = None,
    writes: bool = True,
    commit_barrier: Callable[[], None] | None = None,
) -> TrainResult:
    """Run (or resume) a stage. Writes `out_dir/last` (resume) and `out_dir/best.safetensors`.

    Args:
        name: stage name for logs and progress bars.
        params: trainable parameters by stable name.
        step: forward + backward of one micro-batch given the loss scale (1 / grad_accum);
            returns float metrics including "loss". Raises NonFiniteLossError itself when
            it can name a layer; the loop checks "loss" otherwise.
        evaluate: held-out (score, metrics); lower score is better.
        batches: epoch -> iterable of micro-batches, the same for the same epoch.
        on_eval: called with (step, metrics) after every evaluation and its checkpoint
            (logging, shipping `out_dir/last` to an artifact store).
        writes: False on data-parallel ranks other than rank 0: they hold the same parameters
            and read (resume from) the checkpoints rank 0 writes to the same `out_dir`.
        commit_barrier: ranks that keep checkpoints of their own (block-wise stage 1) wait here
            for each other between writing a checkpoint and replacing the previous one, so
            every rank can always resume at one common step (`training.blockwise`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = None
    if cfg.plateau_patience >= 0:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    info = {"step": 0, "epoch": 0, "position": 0, "best_score": math.inf, "best_step": 0, "history": []}
    last = out_dir / "last"
    if writes and (saved := saved_states(last)):  # a crash may have left the newest at last.tmp
        settle_train_state(last, max(saved))
    if (last / "state.json").exists():
        info = load_train_state(last, params, optimizer, scheduler)
        log.info("%s: resuming at step %d (epoch %d, batch %d)", name, info["step"], info["epoch"], info["position"])

    def checkpoint() -> None:
        if writes:
            save_train_state(last, params, optimizer, scheduler, info, commit_barrier)

    def stop(reason: str) -> NonFiniteLossError:
        where = (f"the last good checkpoint is {last} (step {info['step'] // cfg.eval_every * cfg.eval_every})"
                 if (last / "state.json").exists() else
                 f"no checkpoint was written yet (the first comes at step {cfg.eval_every}); a re-run starts afresh")
        return NonFiniteLossError(f"{name} stopped at step {info['step'] + 1}: {reason}. The parameters were not "
                                  f"updated; {where}. Lower the learning rate or check the data.")

    stream = _micro_batches(batches, info["epoch"], info["position"])
    bar = tqdm(total=cfg.max_steps, initial=info["step"], desc=name, unit="step", dynamic_ncols=True)
    eval_metrics: dict = {}
    while info["step"] < cfg.max_steps:
        metrics: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            info["epoch"], info["position"], batch = next(stream)
            try:
                step_metrics = step(batch, 1.0 / cfg.grad_accum)
                if not math.isfinite(step_metrics["loss"]):
                    raise NonFiniteLossError(f"loss is {step_metrics['loss']}")
            except NonFiniteLossError as e:
                raise stop(str(e)) from None
            for k, v in step_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum
        if bad := non_finite_gradients(params):
            raise stop(f"non-finite gradients in {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        info["step"] += 1
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{metrics['lr']:.2g}")
        if info["step"] % cfg.eval_every == 0 or info["step"] == cfg.max_steps:
            score, eval_metrics = evaluate()
            if scheduler is not None:
                scheduler.step(score)
            record = {"step": info["step"], "train_loss": metrics["loss"], "eval_score": score, "lr": metrics["lr"]}
            info["history"].append(record)
            log.info("%s step %d: train loss %.5g, held-out %.5g", name, info["step"], metrics["loss"], score)
            if score < info["best_score"]:
                info["best_score"], info["best_step"] = score, info["step"]
                if writes:
                    save_file({k: p.detach().cpu().contiguous() for k, p in params.items()},
                              out_dir / "best.safetensors")
            checkpoint()
            if on_eval is not None:  # after the checkpoint, so a hook may ship it elsewhere
                on_eval(info["step"], {**eval_metrics, "eval_score": score, "train_loss": metrics["loss"]})
    bar.close()
    return TrainResult(steps=info["step"], best_score=info["best_score"], best_step=info["best_step"],
                       history=info["history"], eval_metrics=eval_metrics)


def restore_best(params: dict[str, torch.nn.Parameter], out_dir: Path) -> None:
    """Load `out_dir/best.safetensors` into the parameters."""
    from safetensors.torch import load_file

    best = load_file(Path(out_dir) / "best.safetensors")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(best[k])
