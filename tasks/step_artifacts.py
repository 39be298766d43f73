"""Pipeline step directories <-> the S3 artifact store.

A finished step directory (`<output_dir>/<name>/<step>-<fingerprint>/`, completed by
`done.json`) is published as the artifact `steps/<name>/<dir name>` without its bulky
`trainer/` resume state; a machine that lacks the directory restores it from there instead
of recomputing it. While a stage trains, its `trainer/` folder (last checkpoint + best
parameters) is shipped after every held-out evaluation to `checkpoints/<name>/<dir name>`,
so a run killed on one machine resumes from that checkpoint on any other.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lolcats_core.pipeline import DONE, read_done
from tasks import artifacts

EXCLUDE = ("trainer",)


def step_key(run_name: str, step_dir: str | Path) -> str:
    return f"steps/{run_name}/{Path(step_dir).name}"


def checkpoint_key(run_name: str, step_dir: str | Path) -> str:
    return f"checkpoints/{run_name}/{Path(step_dir).name}/trainer"


def localize(record: dict, step_dir: Path) -> dict:
    """A completion record with its paths pointing at `step_dir` (it may come from another
    machine, where the output directory was elsewhere)."""
    out = dict(record, dir=str(step_dir))
    if "model" in record:
        out["model"] = str(Path(step_dir) / "model")
    return out


def restore(step_dir: Path, key: str) -> tuple[dict | None, str]:
    """(completion record, where) of a finished step: local `done.json`, else the complete S3
    artifact downloaded into `step_dir`; (None, "") when the step has not finished anywhere."""
    step_dir = Path(step_dir)
    if (done := read_done(step_dir)) is not None:
        return localize(done, step_dir), "local"
    if artifacts.is_complete(key):
        artifacts.download_dir(key, step_dir)
        if (done := read_done(step_dir)) is not None:
            return localize(done, step_dir), "s3"
    return None, ""


def publish(step_dir: Path, key: str, metadata: dict | None = None) -> dict:
    """Upload a finished step directory minus `trainer/` (atomic; identical files: no-op)."""
    step_dir = Path(step_dir)
    if read_done(step_dir) is None:
        raise RuntimeError(f"refusing to publish {step_dir}: it has no {DONE} (step unfinished)")
    with tempfile.TemporaryDirectory(prefix="lolcats-publish-") as tmp:
        for f in step_dir.rglob("*"):
            rel = f.relative_to(step_dir)
            if f.is_file() and rel.parts[0] not in EXCLUDE:
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / rel).symlink_to(f.resolve())
        return artifacts.upload_dir(tmp, key, metadata=metadata)


def ship_checkpoint(trainer_dir: Path, key: str) -> None:
    """Upload the trainer folder (resume state) and drop superseded uploads of it."""
    artifacts.upload_dir(trainer_dir, key)
    artifacts.gc_uploads(key, older_than_s=0)


def restore_checkpoint(step_dir: Path, key: str) -> tuple[int | None, str]:
    """(step, where) of the trainer checkpoint a stage will resume from: the local
    `trainer/last`, else the one shipped to S3 (downloaded into `step_dir/trainer`)."""
    state = Path(step_dir) / "trainer" / "last" / "state.json"
    where = "local"
    if not state.is_file():
        if not artifacts.is_complete(key):
            return None, ""
        artifacts.download_dir(key, Path(step_dir) / "trainer")
        where = "s3"
    try:
        return int(json.loads(state.read_text())["info"]["step"]), where
    except (OSError, ValueError, KeyError):
        return None, ""
