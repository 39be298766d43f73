"""Wait for a flow run and print what it produced (used by deploy/main_job.sh).

    python -m flows.watch <flow-run-id> [--timeout 1800]

While the run lasts, prints its progress: the state changes of the flow run and of each task
run, and the run's log lines (steps, losses, checkpoints), each with the seconds since the
watch began. Then prints the run's final state, its `linearize-summary-*` markdown artifact
(evaluation table, `registered: models:/<name>/<version>`, model version page), and exits 1
if the run did not complete, with the tail of its logs.
"""

from __future__ import annotations

import argparse
import sys
import time
from uuid import UUID

LOG_FLUSH_SECONDS = 3.0  # > Prefect's batch interval for shipping logs to the API (2 s)


def wait(flow_run_id: str, timeout: float = 1800, poll: float = 2.0):
    """The flow run once it is final, printing its progress meanwhile."""
    from prefect.client.orchestration import get_client

    t0 = time.monotonic()
    states: dict[str, str] = {}  # flow/task run name -> last state printed
    seen_logs: dict = {}

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f} s] {text}", flush=True)

    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(UUID(flow_run_id))
            final = run.state and run.state.is_final()
            if final:
                time.sleep(LOG_FLUSH_SECONDS)  # the run's last log lines reach the server in batches
            for line in new_log_lines(client, flow_run_id, seen_logs):
                say(f"  {line}")
            for name, state in [*task_states(client, flow_run_id), (f"flow run {run.name}", run.state)]:
                if state and states.get(name) != state.name:
                    states[name] = state.name
                    say(f"{name}: {state.name}")
            if final:
                return run
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout:.0f} s")
            time.sleep(poll)


def task_states(client, flow_run_id: str) -> list[tuple[str, object]]:
    """[("task <name>", state)] of the flow run's task runs, in start order."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    runs.sort(key=lambda r: r.expected_start_time or r.created)
    return [(f"task {r.name}", r.state) for r in runs]


def new_log_lines(client, flow_run_id: str, seen: dict) -> list[str]:
    """The flow run's log messages not returned before, oldest first (first lines, at most 200
    characters). `seen` carries the ids returned so far and the newest timestamp between calls."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp

    since = LogFilterTimestamp(after_=seen["since"]) if seen.get("since") else None
    logs = client.read_logs(log_filter=LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)]), timestamp=since))
    ids = seen.setdefault("ids", set())
    fresh = [log for log in logs if log.id not in ids]
    ids.update(log.id for log in fresh)
    if fresh:
        seen["since"] = max(log.timestamp for log in fresh)
    return [log.message.splitlines()[0][:200] for log in fresh if log.message]


def artifacts_of(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))


def log_tail(flow_run_id: str, n: int = 40) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)])))
    return [f"{log.timestamp:%H:%M:%S} {log.message}" for log in logs[-n:]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("flow_run_id")
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args(argv)
    run = wait(a.flow_run_id, a.timeout)
    if not run.state.is_completed():
        print(f"flow run {run.name} ended {run.state.name}: {run.state.message}", file=sys.stderr)
        print("\n".join(log_tail(a.flow_run_id)), file=sys.stderr)
        return 1
    for art in artifacts_of(a.flow_run_id):
        if art.key and art.key.startswith("linearize-summary"):
            print(art.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
