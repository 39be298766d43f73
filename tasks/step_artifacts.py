"""Pipeline step directories <-> the S3 artifact store.

A finished step directory (`<output_dir>/<name>/<step>-<fingerprint>/`, completed by
`done.json`) is published as the artifact `steps/<name>/<dir name>` without its bulky
`trainer/` resume state; a machine that lacks the directory restores it from there instead
of recomputing it. While a stage trains, its `trainer/` folder (last checkpoint + best
parameters) is shipped after every held-out evaluation to `checkpoints/<name>/<dir name>`,
so a run killed on one machine resumes from that checkpoint on any other. Prepared data is
published as `data/<its folder name>`.

A step result that Prefect's cache returned (`tasks.step_cache`) may come from another machine:
the flows bring its files here with `local_step` and `load_data` before a later step uses them.
A task run that refreshes (`step_cache.refreshing()`) ignores what exists: `restore` removes the
local directory and `restore_checkpoint` the shipped checkpoint, so the step starts over.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from lolcats_core.pipeline import DONE, read_done
from tasks import artifacts
from tasks.step_cache import refreshing

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
    artifact downloaded into `step_dir` (`done.json` last); (None, "") when the step has not
    finished anywhere, or when the running task refreshes (then `step_dir` is removed)."""
    step_dir = Path(step_dir)
    if refreshing():
        shutil.rmtree(step_dir, ignore_errors=True)
        return None, ""
    if (done := read_done(step_dir)) is not None:
        return localize(done, step_dir), "local"
    if artifacts.is_complete(key):
        artifacts.download_dir(key, step_dir, last=DONE)
        if (done := read_done(step_dir)) is not None:
            return localize(done, step_dir), "s3"
    return None, ""


def local_step(cfg, record: dict) -> dict:
    """A step's completion record (perhaps a cached result from another machine) with its
    directory under this machine's `output_dir`, downloaded from S3 if missing here."""
    step_dir = Path(cfg.output_dir) / cfg.name / Path(record["dir"]).name
    key = step_key(cfg.name, step_dir)
    rec, _ = restore(step_dir, key)
    if rec is None:
        raise artifacts.IncompleteArtifact(f"{step_dir.name} is neither in {step_dir.parent} nor complete in S3 "
                                           f"as {key}; run the flow with refresh=True to recompute it")
    return rec


def data_key(data_dir: str | Path) -> str:
    """The S3 key of the prepared data in folder `data_dir`."""
    return f"data/{Path(data_dir).name}"


def restore_data(data_dir: Path) -> str:
    """Where the prepared data of folder `data_dir` is: "local", "s3" (downloaded now, its
    manifest last) or "" (nowhere, or the running task refreshes: to be prepared)."""
    from lolcats_core.data import MANIFEST

    if refreshing():
        return ""
    if (Path(data_dir) / MANIFEST).is_file():
        return "local"
    if artifacts.is_complete(data_key(data_dir)):
        artifacts.download_dir(data_key(data_dir), data_dir, last=MANIFEST)
        return "s3"
    return ""


def load_data(cfg, prepared: dict):
    """The `PreparedData` of a prepare_data result on this machine (downloaded if missing)."""
    from lolcats_core.data import dataset_dir, load_prepared

    path = dataset_dir(cfg.data, prepared["fingerprint"])
    if not restore_data(path):
        raise artifacts.IncompleteArtifact(f"prepared data {path.name} is neither in {path.parent} nor complete in "
                                           f"S3 as {data_key(path)}; run the flow with refresh=True to prepare it")
    return load_prepared(path)


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
    `trainer/last`, else the one shipped to S3 (downloaded into `step_dir/trainer`); none when
    the running task refreshes (the shipped one is deleted)."""
    if refreshing():
        artifacts.delete_artifact(key)
        return None, ""
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
