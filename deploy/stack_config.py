"""Ports, paths and environment of one local stack instance (read from the environment; see
deploy/stack.py for the variables), the offline switches, and the HTTP probe the stack's
modules share. Standard library only: the tests import it to find a stack's endpoints."""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
SERVICES = ("s3", "prefect", "mlflow", "worker")
LOCAL_ACCESS_KEY = "lolcats-local"
LOCAL_SECRET_KEY = "lolcats-local-secret"
# Offline switches every process of the project needs (DESIGN.md section 3); `apply_offline_env`
# sets them in Python, `python deploy/stack_config.py offline-env` prints them for a shell.
OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def apply_offline_env(environ=os.environ) -> None:
    """Set the offline switches in `environ` (before anything imports huggingface_hub,
    prefect or mlflow: they read them at import time)."""
    environ.update(OFFLINE_ENV)


class StackError(RuntimeError):
    """A service failed to start or stop; the message says which and where its log is."""


@dataclass(frozen=True)
class Config:
    """Ports, paths and names of one stack instance, read from the environment."""

    run_dir: Path
    prefect_port: int
    mlflow_port: int
    s3_port: int
    weed_master_port: int
    weed_volume_port: int
    weed_filer_port: int
    weed_admin_port: int
    bucket: str
    work_pool: str
    query_seconds: str
    heartbeat_seconds: int = 30
    zombie_seconds: int = 90

    @classmethod
    def from_env(cls, run_dir: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
                 ) -> Config:
        """The config `environ` (default: this process's environment) describes."""
        env = os.environ if environ is None else environ

        def port(name: str, default: int) -> int:  # every default shifts with LOLCATS_PORT_OFFSET
            return int(env.get(name, default + int(env.get("LOLCATS_PORT_OFFSET", "0"))))

        return cls(
            run_dir=Path(run_dir or env.get("LOLCATS_STACK_DIR") or REPO / "runs" / "stack"
                         ).resolve(),
            prefect_port=port("LOLCATS_PREFECT_PORT", 4200),
            mlflow_port=port("LOLCATS_MLFLOW_PORT", 5000),
            s3_port=port("LOLCATS_S3_PORT", 8333),
            weed_master_port=port("LOLCATS_WEED_MASTER_PORT", 9333),
            weed_volume_port=port("LOLCATS_WEED_VOLUME_PORT", 9340),
            weed_filer_port=port("LOLCATS_WEED_FILER_PORT", 8888),
            weed_admin_port=port("LOLCATS_WEED_ADMIN_PORT", 23646),
            bucket=env.get("LOLCATS_S3_BUCKET", "lolcats"),
            work_pool=env.get("LOLCATS_WORK_POOL", "local"),
            query_seconds=env.get("PREFECT_WORKER_QUERY_SECONDS", "10"),
            heartbeat_seconds=int(env.get("LOLCATS_HEARTBEAT_SECONDS", "30")),
            zombie_seconds=int(env.get("LOLCATS_ZOMBIE_SECONDS", "90")),
        )

    @property
    def prefect_api(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    def port_of(self, svc: str) -> int:
        return {"s3": self.s3_port, "prefect": self.prefect_port,
                "mlflow": self.mlflow_port, "worker": self.prefect_port}[svc]

    def ports_of(self, svc: str) -> list[int]:
        """Every port a service binds (weed mini also binds each port + 10000 for gRPC)."""
        if svc == "s3":
            http = [self.s3_port, self.weed_master_port, self.weed_volume_port,
                    self.weed_filer_port, self.weed_admin_port]
            return http + [p + 10000 for p in http]
        return [] if svc == "worker" else [self.port_of(svc)]

    def pid_file(self, svc: str) -> Path:
        return self.run_dir / "pids" / f"{svc}.pid"

    def log_file(self, svc: str) -> Path:
        return self.run_dir / "logs" / f"{svc}.log"

    def public_env(self) -> dict[str, str]:
        """Endpoints clients need (no secrets): written to RUN_DIR/stack.env."""
        return {
            "PREFECT_API_URL": self.prefect_api,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "LOLCATS_S3_ENDPOINT": self.s3_endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "LOLCATS_S3_BUCKET": self.bucket,
        }


# Credentials and who gets them: the S3 keys go to weed (it enforces them), MLflow (it proxies
# artifacts to S3) and the worker (its flow runs read and write checkpoints); the Prefect server
# never touches S3 and gets none. weed's internal keys (WEED_*) are made by stack.py per start.
SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
USES_S3_KEYS = frozenset({"s3", "mlflow", "worker"})


def s3_credentials(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3 keys of the stack (from `environ`, default this process's; local defaults)."""
    env = os.environ if environ is None else environ
    creds = {"AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID") or LOCAL_ACCESS_KEY,
             "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY") or LOCAL_SECRET_KEY}
    if env.get("AWS_SESSION_TOKEN"):
        creds["AWS_SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    return creds


def service_env(cfg: Config, svc: str = "prefect") -> dict[str, str]:
    """Environment of one service process: offline switches, endpoints, and the S3 credentials
    only for the services in USES_S3_KEYS (the default, the Prefect server, and the Prefect CLI
    calls of prefect_setup.py get none). Any WEED_* variable of the caller is dropped: weed's
    keys are stack.py's business."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith("WEED_")}
    env.update(OFFLINE_ENV)
    env.update(cfg.public_env())
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if svc in USES_S3_KEYS:
        env.update(s3_credentials())
    env["PREFECT_HOME"] = str(cfg.run_dir / "prefect")
    env["LOLCATS_REPO"] = str(REPO)  # where deployments' pull step finds flows/ and tasks/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PREFECT_WORKER_QUERY_SECONDS"] = cfg.query_seconds
    # flow runs started by the worker emit `prefect.flow-run.heartbeat` events this often; the
    # zombie automation (ensure_zombie_automation) crashes a run whose heartbeats stop
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(cfg.heartbeat_seconds)
    env["PYTHONUNBUFFERED"] = "1"
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # GenAI job runner: 7 busy processes
    return env


def venv_bin(name: str) -> str:
    """An executable from this interpreter's venv (falls back to PATH)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found: run `make install` (it installs the `service` extra)")
    return found


def http_ok(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 3,
             attempts: int = 1) -> str | None:
    """Response text if `url` answers 2xx (within `attempts` tries of `timeout` s), else None."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read().decode() or "ok"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            if attempt + 1 < attempts:
                time.sleep(1)
    return None


def http_write(url: str, method: str, body: bytes | None = None) -> str | None:
    """An idempotent request to the Prefect API: a busy SQLite-backed server can take seconds
    to answer, so wait longer and try again."""
    return http_ok(url, method, body, timeout=15, attempts=3)


if __name__ == "__main__":
    if sys.argv[1:] != ["offline-env"]:
        sys.exit("usage: python deploy/stack_config.py offline-env   (prints `export` lines)")
    print("export " + " ".join(f"{k}={v}" for k, v in OFFLINE_ENV.items()))
