"""Cached steps anywhere, on the real stack: after the tiny deployment's first run
(tests/service/conftest.py: tiny_run) filled S3, a run on a worker whose work directory is
empty gets every step Cached from Prefect's cache in S3 and registers nothing; without those
cached results its tasks restore every output from S3 instead of recomputing it; `refresh=True`
recomputes every step.

A "fresh worker" here is the run config of tiny_run with its work directories (`output_dir`,
`data.cache_dir`) moved to an empty folder: every fingerprint stays the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny import task_runs, tiny_tree, wait_flow_run, write_config

pytestmark = pytest.mark.stack
STEPS = {"prepare_data": 1, "attention_transfer": 1, "lora_adjust": 1, "evaluate_passkey": 2,
         "evaluate_lm_eval": 2, "register_model": 1}  # task runs per flow run


def _fresh_config(tiny_root: Path, workdir: Path) -> Path:
    """tiny_run's config with an empty work directory."""
    return write_config(workdir / "fresh.yaml", tiny_tree("tiny-cli", tiny_root / "base", workdir))


def _states(flow_run_id) -> dict[str, list[str]]:
    """{task name: [state names of its runs]} of a flow run (from the Prefect API)."""
    out: dict[str, list[str]] = {}
    for tr in task_runs(flow_run_id):
        out.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr.state.name)
    return out


def _same_files(fresh: Path, first: Path, pattern: str) -> list[str]:
    """Names of the `pattern` files under `fresh` that are byte-identical to `first`'s (a
    restored file still names the first run's folders; a recomputed one names `fresh`)."""
    return sorted(str(f.relative_to(fresh)) for f in fresh.glob(pattern)
                  if f.read_bytes() == (first / f.relative_to(fresh)).read_bytes())


def _versions() -> int:
    from tasks.tracking import client

    return len(client().search_model_versions("name = 'lolcats-tiny-cli'"))


def test_fresh_worker_gets_every_step_cached_and_registers_nothing(stack, tiny_root, tiny_run, tiny_deployment,
                                                                   tmp_path):
    from prefect.deployments import run_deployment

    from tasks import step_cache  # noqa: F401 - the results' storage block type, to read them back
    from tasks.tracking import client

    assert tiny_run["flow_run"].state.is_completed()
    versions = _versions()
    run = run_deployment(tiny_deployment["name"], parameters={"config": str(_fresh_config(tiny_root, tmp_path))},
                         timeout=0)
    run = wait_flow_run(run.id, timeout=300)
    assert run.state.is_completed(), run.state
    states = _states(run.id)
    assert states == {name: ["Cached"] * n for name, n in STEPS.items()}, states
    assert _versions() == versions
    (mlflow_run,) = client().search_runs([client().get_experiment_by_name("lolcats-tiny-cli").experiment_id],
                                         filter_string=f"tags.`prefect.flow_run_id` = '{run.id}'")
    assert mlflow_run.data.tags["lolcats.outcome"] == "reused"
    # the prepared data and both stages' folders came from S3: byte-identical to the first run's
    assert _same_files(tmp_path / "data", tiny_root / "data", "*/lolcats_data.json")
    runs = tmp_path / "runs" / "tiny-cli"
    assert _same_files(runs, tiny_root / "runs" / "tiny-cli", "*/done.json") == \
        sorted(f"{d.name}/done.json" for d in runs.glob("stage*")) and len(list(runs.glob("stage*"))) == 2
    # the evaluation reports are the cached results, read back from S3 through the Prefect API
    first = {json.dumps(json.loads((d / "report.json").read_text()), sort_keys=True)
             for d in (tiny_root / "runs" / "tiny-cli").glob("eval-*")}
    cached = [tr.state.result() for tr in task_runs(run.id) if tr.name.startswith("evaluate_")]
    assert {json.dumps(r, sort_keys=True) for r in cached} == first


def test_without_cached_results_every_output_is_restored_from_s3(stack, tiny_root, tiny_run, tmp_path):
    """The S3 store holds the steps' outputs but not Prefect's results (say, outputs published
    before the cache existed): every task runs, and restores its output instead of computing it."""
    from flows.linearize import linearize
    from tasks import artifacts

    assert tiny_run["flow_run"].state.is_completed()
    versions = _versions()
    s = artifacts.S3Settings.from_env()
    s3 = artifacts.client(s)
    listed = s3.list_objects_v2(Bucket=s.bucket, Prefix="prefect-results/v1/tiny-cli/").get("Contents", [])
    assert listed and s3.delete_objects(Bucket=s.bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})
    state = linearize(config=str(_fresh_config(tiny_root, tmp_path)), return_state=True)
    assert state.is_completed(), state
    states = _states(state.state_details.flow_run_id)
    assert states == {name: ["Completed"] * n for name, n in STEPS.items()}, states
    assert state.result()["created"] is False and _versions() == versions
    runs, first = tmp_path / "runs" / "tiny-cli", tiny_root / "runs" / "tiny-cli"
    assert len(_same_files(runs, first, "*/done.json")) == 6  # 2 stages, 4 evaluations
    assert len(_same_files(runs, first, "eval-*/report.json")) == 4
    assert _same_files(tmp_path / "data", tiny_root / "data", "*/lolcats_data.json")


def test_refresh_reruns_every_step(stack, tiny_root, tiny_run, tmp_path):
    from flows.linearize import linearize

    assert tiny_run["flow_run"].state.is_completed()
    versions = _versions()
    state = linearize(config=str(_fresh_config(tiny_root, tmp_path)), refresh=True, return_state=True)
    assert state.is_completed(), state
    states = _states(state.state_details.flow_run_id)
    assert states == {name: ["Completed"] * n for name, n in STEPS.items()}, states
    out = state.result()
    assert out["created"] is False and _versions() == versions  # the same inputs: the same version
    # everything was computed here (the records name this work directory), nothing restored
    runs = tmp_path / "runs" / "tiny-cli"
    assert _same_files(runs, tiny_root / "runs" / "tiny-cli", "*/done.json") == []
    assert {Path(json.loads(f.read_text())["dir"]).parent for f in runs.glob("*/done.json")} == {runs}
    assert json.loads(next((tmp_path / "data").glob("*/lolcats_data.json")).read_text())["config"]["cache_dir"] \
        == str(tmp_path / "data")
    assert out["stage1_steps"] == 6 and out["stage2_steps"] == 4
