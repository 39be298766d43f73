"""The flow's attention_transfer task runs stage 1 under torchrun when the config asks for several
processes (`distributed.gpus: 2`: 2 CPU processes, gloo), on the real local stack: the ranks' lines
reach the task's log, rank 0's evaluations ship checkpoints to S3, the finished step is published."""

from __future__ import annotations

import pytest

from tiny import tiny_tree

pytestmark = pytest.mark.stack


def test_attention_transfer_task_runs_under_torchrun_with_2_processes(stack, tiny_root, tmp_path):
    from prefect import flow

    from lolcats_core import pipeline
    from lolcats_core.presets import base_model_ref
    from lolcats_core.run_config import load_run_config
    from tasks import artifacts, pipeline_tasks, step_artifacts
    from test_linearize_flow import _logs_with

    tree = tiny_tree("tiny-torchrun", tiny_root / "base", tmp_path, max_steps=4, eval_every=2)
    tree["data"]["cache_dir"] = str(tiny_root / "data")  # the flow tests' data: prepared once per session
    cfg = load_run_config(tree=tree | {"distributed": {"gpus": 2}})
    data = pipeline.prepare_data(cfg)
    base = base_model_ref(cfg.model).to_dict()

    @flow(name="torchrun-stage1")
    def stage1() -> dict:
        return pipeline_tasks.attention_transfer.with_options(refresh_cache=True)(cfg, data, base)

    state = stage1(return_state=True)
    assert state.is_completed(), state
    rec = state.result()
    assert rec["ranks"] == 2 and rec["steps"] == 4 and set(rec["layer_mse"]) == {"0", "1"}
    step_dir = pipeline.stage1_dir(cfg, base["fingerprint"], data.fingerprint)
    assert rec["dir"] == str(step_dir)
    logs = _logs_with(state.state_details.flow_run_id, "torchrun with 2 processes",
                      "attention transfer, layers 0-0 step 4", "attention transfer, layers 1-1 step 4")
    for line in ("stage 1: torchrun with 2 processes", "attention transfer, layers 0-0 step 4",
                 "attention transfer, layers 1-1 step 4", "stage1: step 4 checkpoint shipped"):
        assert line in logs, logs[-3000:]
    assert artifacts.is_complete(step_artifacts.checkpoint_key(cfg.name, step_dir))
    assert artifacts.is_complete(step_artifacts.step_key(cfg.name, step_dir))
