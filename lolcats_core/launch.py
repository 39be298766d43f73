"""A training stage under torchrun, launched from another process (the service's stage tasks).

    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m lolcats_core.cli train --stage K --config <the run config as resolved>

`torchrun_stage` writes the run config as resolved (profile and overrides applied:
`RunConfig.source`) to a file beside the step's directory, starts torchrun on this machine with
`distributed.gpus` processes, hands every line the ranks print to `on_line` and every held-out
evaluation that rank 0 reports (an `EVAL_PREFIX` line of `lolcats train`) to
`on_eval(step, metrics, trainer_dir)`, and returns the step's completion record. The ranks
train on while `on_eval` runs, so `trainer_dir` is a hard-linked snapshot of the step's
`trainer/` folder taken when the line arrived (the trainer replaces checkpoints by renaming
new files into place and never rewrites a file, so the snapshot stays whole). A failed launch
raises `LaunchError` with the rank that failed first, its exit code or signal and the error it
printed; torchrun has stopped the other ranks, and a re-run resumes from the last checkpoint.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import yaml

from .errors import ConfigError, LolcatsError

EVAL_PREFIX = "lolcats-eval "  # + {"step": int, "metrics": {...}}: rank 0 of `lolcats train`
ERROR_PREFIX = "lolcats train: error: "  # how `lolcats train` reports a LolcatsError
TAIL_LINES = 15  # lines of output a LaunchError quotes
PROGRESS_SECONDS = "30"  # the ranks' progress bars print at most this often (TQDM_MININTERVAL)


class LaunchError(LolcatsError, RuntimeError):
    """A stage under torchrun failed: a rank raised, was killed or lost its peers."""


def eval_line(step: int, metrics: dict) -> str:
    """The line `lolcats train` prints after each held-out evaluation (rank 0)."""
    return EVAL_PREFIX + json.dumps({"step": step, "metrics": metrics})


def torchrun_command(config: Path, stage: int, gpus: int) -> list[str]:
    """torchrun on this machine (a free rendezvous port) running `lolcats train` on `gpus` ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
            "-m", "lolcats_core.cli", "train", "--stage", str(stage), "--config", str(config)]


def check_launchable(cfg) -> None:
    """Fail before launching when this machine cannot run the config's processes."""
    dist = cfg.distributed
    if dist.nodes > 1:
        raise ConfigError(f"{cfg.name}: distributed.nodes is {dist.nodes}: a stage on several nodes runs as "
                          "the Kubernetes job of deploy/k8s_train.py (deploy/CLUSTER.md), not from one machine")
    if cfg.resolved_device().startswith("cuda"):
        import torch

        if torch.cuda.device_count() < dist.gpus:
            raise ConfigError(f"{cfg.name}: distributed.gpus is {dist.gpus}, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s): lower it or give the worker more GPUs")


def failure_message(stage: int, gpus: int, code: int, tail: list[str], error: str | None) -> str:
    """What went wrong, from torchrun's root-cause report and the ranks' last lines."""
    lines = "\n".join(tail)
    block = lines.split("Root Cause", 1)[1] if "Root Cause" in lines else ""
    cause = [f"{key} {value.strip()}" for key, value in re.findall(r"^\s*(rank|exitcode|traceback)\s*:(.*)$", block, re.M)
             if key != "traceback" or value.strip().startswith("Signal")]
    return (f"stage {stage} failed under torchrun ({gpus} processes, exit code {code})"
            + (f": {error}" if error else "") + (f" [first failure: {'; '.join(cause)}]" if cause else "")
            + f". A re-run resumes from the last checkpoint. Last output:\n{lines}")


def _snapshot(trainer: Path, into: Path) -> Path:
    """A hard-linked copy of the `trainer` folder under `into` (replaced)."""
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(trainer, into, copy_function=os.link)
    return into


def torchrun_stage(cfg, stage: int, step_dir: Path, on_line: Callable[[str], None],
                   on_eval: Callable[[int, dict, Path], None] | None = None) -> dict:
    """Run stage `stage` (1 or 2) of `cfg` under torchrun; returns its completion record."""
    from .pipeline import read_done

    check_launchable(cfg)
    step_dir = Path(step_dir)
    step_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": PROGRESS_SECONDS}
    with tempfile.TemporaryDirectory(dir=step_dir.parent, prefix=f".{step_dir.name}-launch-") as tmp:
        config = Path(tmp) / "run.yaml"
        config.write_text(yaml.safe_dump(cfg.source, sort_keys=False))
        proc = subprocess.Popen(torchrun_command(config, stage, cfg.distributed.gpus), env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail, error = deque(maxlen=TAIL_LINES), None
        try:
            for line in proc.stdout:
                line = line.rstrip()
                if line.startswith(EVAL_PREFIX) and on_eval is not None:
                    event = json.loads(line[len(EVAL_PREFIX):])
                    try:
                        trainer = _snapshot(step_dir / "trainer", Path(tmp) / "trainer")
                    except OSError as e:
                        on_line(f"step {event['step']}: no snapshot of the checkpoint to hand on ({e})")
                        continue
                    on_eval(event["step"], event["metrics"], trainer)
                    continue
                if error is None and ERROR_PREFIX in line:
                    error = line.split(ERROR_PREFIX, 1)[1]
                tail.append(line)
                on_line(line)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted (e.g. the task's timeout): stop every rank
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if code != 0:
        raise LaunchError(failure_message(stage, cfg.distributed.gpus, code, list(tail), error))
    record = read_done(step_dir)
    if record is None:
        raise LaunchError(f"stage {stage} under torchrun ended without error but {step_dir} has no completion "
                          "record: the ranks computed another step directory (a different config?)")
    return record
