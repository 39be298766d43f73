"""Zombie flow runs heal themselves: a killed worker's run is marked Crashed by the automation
that deploy/stack.py creates (no heartbeat for LOLCATS_ZOMBIE_SECONDS), which frees the
deployment's concurrency slot, so the next run of the deployment starts and completes.

The flow below is the worker's entrypoint too (`tests/service/test_zombie_runs.py:sleepy`)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest
from prefect import flow

pytestmark = pytest.mark.stack


@flow(name="lolcats-zombie-probe")
def sleepy(seconds: float = 0.0) -> str:
    """Sleeps `seconds` (in short naps, as a training loop would compute), then returns."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
    return "done"


def _post(url: str, body: dict) -> list | dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _heartbeats(stack, flow_run_id) -> int:
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


def test_killed_worker_run_is_crashed_and_the_next_run_proceeds(stack):
    """SIGKILL the worker and its flow-run process mid-run: within the zombie window the run
    turns Crashed without anyone cancelling it, and a run of the same deployment (concurrency
    1, ENQUEUE), submitted right after the kill and queued behind the zombie, then completes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments import run_deployment

    from helpers import descendant_pids, wait_for  # not at the top: the worker imports this module
    from tiny import wait_flow_run

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sleepy.from_source(source=repo, entrypoint="tests/service/test_zombie_runs.py:sleepy").deploy(
        name="zombie", work_pool_name="local", print_next_steps=False, ignore_warnings=True,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"))
    name = "lolcats-zombie-probe/zombie"
    first = run_deployment(name, parameters={"seconds": 600}, timeout=0)
    with get_client(sync_client=True) as client:
        wait_for(lambda: client.read_flow_run(first.id).state.is_running(), 90, "the run to start", poll=0.5)
        wait_for(lambda: _heartbeats(stack, first.id) > 0, 30, "its first heartbeat", poll=0.5)
        worker = stack.pid("worker")
        for pid in [worker] + descendant_pids(worker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed = time.monotonic()
        stack.sh("up", "worker")
        second = run_deployment(name, parameters={"seconds": 0}, timeout=0)
        time.sleep(5)  # the new worker has polled: the second run must wait for the slot
        assert client.read_flow_run(first.id).state.is_running()
        assert not client.read_flow_run(second.id).state.is_final()
        crashed = wait_for(lambda: (s := client.read_flow_run(first.id).state).is_final() and s,
                           90, "the zombie run to be marked Crashed", poll=0.5)
        took = time.monotonic() - killed
    assert crashed.is_crashed(), crashed
    assert "no heartbeat for 50 s" in (crashed.message or ""), crashed.message
    assert took <= 50 + 30 + 10, f"crashed {took:.0f} s after the kill"  # window + beat + eval
    run = wait_flow_run(second.id, timeout=90)
    assert run.state.is_completed(), run.state
    print(f"zombie run Crashed {took:.1f} s after the kill; next run completed "
          f"{time.monotonic() - killed:.1f} s after the kill")
