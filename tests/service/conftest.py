"""Fixtures for the service tests: the real local stack, started by `deploy/stack.sh` in a
temporary run folder on free ports (so a developer's own stack on the default ports is not
touched) and stopped by PID at the end of the session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK_SH = REPO / "deploy" / "stack.sh"
if str(REPO) not in sys.path:  # `tasks` and `flows` are plain folders of the checkout
    sys.path.insert(0, str(REPO))
if str(Path(__file__).parent) not in sys.path:  # `tiny` (helpers of the flow tests)
    sys.path.insert(0, str(Path(__file__).parent))

from stack_config import Config  # noqa: E402 - deploy/, on the path by tests/conftest.py

# A private Prefect home before anything imports prefect (offline switches: tests/conftest.py).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lolcats-prefect-home-"))

TEST_ACCESS_KEY = "lolcats-test-key"
TEST_SECRET_KEY = "lolcats-test-secret-0123456789"


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


_TAKEN_PORTS: set[int] = set()  # ports (and port + 10000) already handed out in this session


def free_port(grpc: bool = False) -> int:
    """A free loopback port (and port + 10000 free too when `grpc`, as weed needs), never one
    handed out before in this session."""
    taken = _TAKEN_PORTS
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in taken or (grpc and (port + 10000 > 65535 or not _free(port + 10000))):
            continue
        taken.update({port, port + 10000})
        return port
    raise RuntimeError("no free port pair found")


@dataclass
class Stack:
    """A running test stack: its run folder, environment and endpoints."""

    run_dir: Path
    env: dict[str, str]

    @property
    def config(self) -> Config:
        """The stack's ports and paths, as deploy/stack.py reads them from `env`."""
        return Config.from_env(self.run_dir, self.env)

    @property
    def prefect_api(self) -> str:
        return self.config.prefect_api

    @property
    def mlflow_uri(self) -> str:
        return self.config.mlflow_uri

    @property
    def s3_endpoint(self) -> str:
        return self.config.s3_endpoint

    def sh(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run `deploy/stack.sh <args...>` against this stack's run folder."""
        cmd = ["bash", str(STACK_SH), args[0], str(self.run_dir), *args[1:]]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def clone(self, run_dir: Path, **env: str) -> Stack:
        """Another stack handle on `run_dir` with this one's environment plus `env`."""
        return Stack(Path(run_dir), self.env | env)

    def pid(self, svc: str) -> int | None:
        f = self.config.pid_file(svc)
        return int(f.read_text()) if f.exists() else None


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def port():
    """Factory of free loopback ports."""
    return free_port


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The whole stack (S3, Prefect, MLflow, worker) up for the test session."""
    run_dir = tmp_path_factory.mktemp("stack")
    ports = {
        "LOLCATS_PREFECT_PORT": free_port(), "LOLCATS_MLFLOW_PORT": free_port(),
        "LOLCATS_S3_PORT": free_port(grpc=True), "LOLCATS_WEED_MASTER_PORT": free_port(grpc=True),
        "LOLCATS_WEED_VOLUME_PORT": free_port(grpc=True),
        "LOLCATS_WEED_FILER_PORT": free_port(grpc=True),
        "LOLCATS_WEED_ADMIN_PORT": free_port(grpc=True),
    }
    env = dict(os.environ) | {k: str(v) for k, v in ports.items()} | {
        "LOLCATS_S3_BUCKET": "lolcats-test", "PREFECT_WORKER_QUERY_SECONDS": "1",
        # a queued run of a busy deployment is re-checked after this (default 30 s)
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "3",
        # zombie detection (deploy/stack.py): heartbeats every 30 s (Prefect's minimum), a
        # deployment run silent for 50 s is marked Crashed (tests/service/test_zombie_runs.py)
        "LOLCATS_HEARTBEAT_SECONDS": "30", "LOLCATS_ZOMBIE_SECONDS": "50",
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1", "LOLCATS_S3_RETRY_SECONDS": "60",
    }
    st = Stack(run_dir, env)
    try:
        up = st.sh("up", check=False)
        if up.returncode != 0:
            pytest.fail(f"stack did not come up:\n{up.stdout}\n{up.stderr}")
        client_env = {"PREFECT_API_URL": st.prefect_api, "MLFLOW_TRACKING_URI": st.mlflow_uri,
                      "LOLCATS_S3_ENDPOINT": st.s3_endpoint, "LOLCATS_S3_BUCKET": "lolcats-test",
                      "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
                      "AWS_DEFAULT_REGION": "us-east-1", "LOLCATS_S3_RETRY_SECONDS": "60"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in client_env.items():
                mp.setenv(k, v)
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings(updates={PREFECT_API_URL: st.prefect_api}):
                yield st
    finally:
        pids = {s: p for s in ("s3", "prefect", "mlflow", "worker") if (p := st.pid(s))}
        down = st.sh("down", check=False)
        alive = {s: p for s, p in pids.items() if _pid_alive(p)}
        for p in alive.values():  # last resort, by PID: never leave servers behind
            try:
                os.killpg(p, 9)
            except ProcessLookupError:
                pass
        assert not alive, f"stack.sh down left processes running: {alive}\n{down.stdout}{down.stderr}"


# --- tiny flow runs (tests/service/test_linearize_flow.py, test_browser.py) ---------------


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Folder holding the tiny base model (random 2-layer Llama + SmolLM2 tokenizer)."""
    from tiny import make_tiny_base

    root = tmp_path_factory.mktemp("tiny")
    make_tiny_base(root)
    return root


@pytest.fixture(scope="session")
def tiny_deployment(stack, tiny_root):
    """Deployment `linearize/tiny` of flows/linearize.py on the `local` pool (worker)."""
    from flows.linearize import linearize
    from tiny import tiny_tree, write_config

    cfg = write_config(tiny_root / "tiny-cli.yaml", tiny_tree("tiny-cli", tiny_root / "base", tiny_root))
    linearize.from_source(source=str(REPO), entrypoint="flows/linearize.py:linearize").deploy(
        name="tiny", work_pool_name="local", parameters={"config": str(cfg)},
        job_variables={"env": {"LOLCATS_TASK_RETRY_DELAYS": "2,4,8", "OMP_NUM_THREADS": "2"}},
        print_next_steps=False, ignore_warnings=True)
    return {"name": "linearize/tiny", "config": cfg, "run_name": "tiny-cli"}


@pytest.fixture(scope="session")
def tiny_run(stack, tiny_deployment):
    """`prefect deployment run linearize/tiny` through the CLI, waited for: the first
    registration of `lolcats-tiny-cli`. Returns {"flow_run", "seconds", "cli"}."""
    import re
    import time

    env = stack.env | {"PREFECT_API_URL": stack.prefect_api, "PREFECT_HOME": os.environ["PREFECT_HOME"]}
    t0 = time.monotonic()
    out = subprocess.run([str(Path(sys.executable).parent / "prefect"), "deployment", "run",
                          tiny_deployment["name"]], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout)
    assert m, f"no flow run id in the CLI output:\n{out.stdout}"
    from tiny import wait_flow_run

    run = wait_flow_run(m.group(1), timeout=400)
    return {"flow_run": run, "seconds": time.monotonic() - t0, "cli": out.stdout}
