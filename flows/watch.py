"""Wait for a flow run and print what it produced (used by deploy/main_job.sh).

    python -m flows.watch <flow-run-id> [--timeout 1800]

Prints the run's final state, its `linearize-summary-*` markdown artifact (evaluation table,
`registered: models:/<name>/<version>`, model version page), and exits 1 if the run did
not complete, with the tail of its logs.
"""

from __future__ import annotations

import argparse
import sys
import time
from uuid import UUID


def wait(flow_run_id: str, timeout: float = 1800, poll: float = 2.0):
    from prefect.client.orchestration import get_client

    t0 = time.monotonic()
    with get_client(sync_client=True) as client:
        last = None
        while True:
            run = client.read_flow_run(UUID(flow_run_id))
            if run.state and run.state.name != last:
                last = run.state.name
                print(f"[{time.monotonic() - t0:6.0f} s] flow run {run.name}: {last}", flush=True)
            if run.state and run.state.is_final():
                return run
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout:.0f} s")
            time.sleep(poll)


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
