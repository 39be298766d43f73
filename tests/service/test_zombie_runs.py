"""Zombie flow runs heal themselves: a killed worker's run is marked Crashed by the automation
that deploy/stack.py creates (no heartbeat for LOLCATS_ZOMBIE_SECONDS), which frees the
deployment's concurrency slot, so the next run of the deployment starts and completes.

Here: the automation itself. The killed worker's run, crashed by it while the next run of its
deployment waits, is checked on a real linearize run that then resumes from its checkpoint
(test_linearize_flow.py::test_killed_worker_run_is_crashed_and_the_next_run_resumes_from_its_checkpoint)."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.stack


def _post(url: str, body: dict) -> list | dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def heartbeats(stack, flow_run_id) -> int:
    """How many heartbeat events of the flow run the Prefect server has received."""
    got = _post(f"{stack.prefect_api}/events/filter", {"filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]},
        "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50})
    return len(got["events"])


def test_stack_creates_the_zombie_automation_once(stack):
    got = _post(f"{stack.prefect_api}/automations/filter", {})
    mine = [a for a in got if a["name"] == "lolcats-crash-zombie-flow-runs"]
    assert len(mine) == 1, got
    trig = mine[0]["trigger"]
    assert trig["posture"] == "Proactive" and trig["within"] == 50.0
    assert trig["after"] == ["prefect.flow-run.heartbeat"]
    assert mine[0]["actions"][0]["state"] == "CRASHED"
    out = stack.sh("up")  # idempotent: a second `up` neither duplicates nor changes it
    assert "zombie automation present" in out.stdout, out.stdout
    again = [a for a in _post(f"{stack.prefect_api}/automations/filter", {})
             if a["name"] == "lolcats-crash-zombie-flow-runs"]
    assert [a["id"] for a in again] == [mine[0]["id"]]
    try:  # a changed window updates the automation in place
        out = stack.clone(stack.run_dir, LOLCATS_ZOMBIE_SECONDS="70").sh("up", "prefect")
        assert "zombie automation updated (70 s)" in out.stdout, out.stdout
        (a,) = [a for a in _post(f"{stack.prefect_api}/automations/filter", {})
                if a["name"] == "lolcats-crash-zombie-flow-runs"]
        assert a["id"] == mine[0]["id"] and a["trigger"]["within"] == 70.0
        bad = stack.clone(stack.run_dir, LOLCATS_ZOMBIE_SECONDS="30").sh("up", "prefect", check=False)
        assert bad.returncode == 1 and "must exceed LOLCATS_HEARTBEAT_SECONDS" in bad.stderr
    finally:
        assert "updated (50 s)" in stack.sh("up", "prefect").stdout
