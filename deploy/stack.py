"""Start, stop and inspect the local lolcats stack (DESIGN.md section 3): process supervision.
Ports and environment: `stack_config.py`; work pools and the zombie automation:
`prefect_setup.py`.

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
  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (local defaults if unset; never printed; passed
  only to weed, MLflow and the worker)

Locked storage: only the S3 port takes clients (with the keys); weed's other ports are keyed by
fresh JWT keys and mutual TLS made at each start of `s3` (see "SeaweedFS security" below).
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
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect_setup import ensure_work_pools, ensure_zombie_automation
from stack_config import HOST, SERVICES, Config, StackError, http_ok, service_env, venv_bin


def command(svc: str, cfg: Config) -> list[str]:
    """The command line that starts one service (credentials are passed by env only)."""
    d = cfg.run_dir
    if svc == "s3":
        # -disableHttp: the master's and filer's HTTP APIs answer 404 (the S3 gateway reaches
        # them by gRPC); the volume server keeps HTTP for the gateway's data, keyed by JWT.
        return [venv_bin("weed"), f"-config_dir={weed_security_dir(cfg)}", "mini",
                f"-dir={d / 'weed'}", f"-ip={HOST}", f"-ip.bind={HOST}", "-disableHttp",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                f"-bucket={cfg.bucket}", f"-s3.port={cfg.s3_port}",
                f"-master.port={cfg.weed_master_port}", f"-volume.port={cfg.weed_volume_port}",
                f"-filer.port={cfg.weed_filer_port}", f"-admin.port={cfg.weed_admin_port}",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
    if svc == "prefect":
        return [venv_bin("prefect"), "server", "start", "--host", HOST,
                "--port", str(cfg.prefect_port), "--analytics-off"]
    if svc == "mlflow":
        return [venv_bin("mlflow"), "server", "--host", HOST, "--port", str(cfg.mlflow_port),
                "--workers", "1",
                "--backend-store-uri", f"sqlite:///{d / 'mlflow' / 'mlflow.db'}",
                "--serve-artifacts", "--artifacts-destination", f"s3://{cfg.bucket}/mlflow"]
    if svc == "worker":
        return [venv_bin("prefect"), "worker", "start", "--pool", cfg.work_pool,
                "--type", "process", "--name", f"{cfg.work_pool}-worker"]
    raise StackError(f"unknown service {svc!r}; choose from {', '.join(SERVICES)}")


# --- SeaweedFS security (locked storage) ----------------------------------------------------
# Only the S3 port takes clients, with the stack's keys. Every other port of `weed mini` is
# closed to anyone without secrets made fresh at each start of the s3 service:
# - HTTP: the master's and filer's APIs are off (-disableHttp); the volume server and the filer
#   want a JWT signed with WEED_JWT_SIGNING_KEY / WEED_JWT_FILER_SIGNING_KEY (and the *_READ_KEY
#   twins for reads), random keys in weed's environment only;
# - gRPC (each port + 10000, and weed's unix sockets in /tmp): mutual TLS with a certificate of
#   a CA made at start-up whose private key is thrown away, so nobody can mint another client
#   certificate; the certificate's key is a 0600 file in RUN_DIR/weed-security.

WEED_JWT_VARS = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY",
                 "WEED_JWT_FILER_SIGNING_KEY", "WEED_JWT_FILER_SIGNING_READ_KEY")
WEED_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker",
                        "msg_agent", "mq", "client")


def weed_security_dir(cfg: Config) -> Path:
    return cfg.run_dir / "weed-security"


def weed_env(env: dict[str, str]) -> dict[str, str]:
    """The s3 service's environment plus fresh random JWT keys (they live only in weed)."""
    import secrets

    return env | {var: secrets.token_urlsafe(32) for var in WEED_JWT_VARS}


def write_weed_security(cfg: Config) -> Path:
    """A fresh CA, one certificate for every weed component (server and client auth) and the
    security.toml that points weed's gRPC at them; the CA's private key is never stored."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = weed_security_dir(cfg)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
        if not ca:
            b = (b.add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
                 .add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("lolcats-weed-ca", ca_key, "lolcats-weed-ca", ca_key, ca=True)
    leaf = cert("lolcats-weed", key, "lolcats-weed-ca", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (d / "weed.pem").write_bytes(leaf.public_bytes(pem))
    key_file = d / "weed.key"
    key_file.unlink(missing_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    lines = ["# written by deploy/stack.py at each start of the s3 service; JWT keys are in weed's",
             "# environment only", "[grpc]", f'ca = "{d / "ca.pem"}"']
    for comp in WEED_GRPC_COMPONENTS:
        lines += [f"[grpc.{comp}]", f'cert = "{d / "weed.pem"}"', f'key = "{key_file}"']
    lines += ["[access]", "ui = false", "[filer.expose_directory_metadata]", "enabled = false"]
    (d / "security.toml").write_text("\n".join(lines) + "\n")
    return d


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
    if svc == "s3":
        write_weed_security(cfg)
        env = weed_env(env)
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


def healthy(svc: str, cfg: Config, since: float | None = None) -> bool:
    """One health probe of a service (it answers on its port and does its job). For the worker,
    `since` (unix time) requires a heartbeat newer than that, i.e. from the new process."""
    if svc == "prefect":
        return http_ok(f"{cfg.prefect_api}/health") == "true"
    if svc == "mlflow":
        return http_ok(f"{cfg.mlflow_uri}/health") is not None
    if svc == "s3":
        return _s3_bucket_ready(cfg)
    if svc == "worker":
        body = json.dumps({"workers": {}}).encode()
        out = http_ok(f"{cfg.prefect_api}/work_pools/{cfg.work_pool}/workers/filter", "POST", body)
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

    env = service_env(cfg, "s3")
    s3 = boto3.client("s3", endpoint_url=cfg.s3_endpoint, region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                      aws_session_token=env.get("AWS_SESSION_TOKEN"),
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


def _start_one(svc: str, cfg: Config) -> str:
    env = service_env(cfg, svc)  # the S3 keys only where USES_S3_KEYS says
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
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    first = [s for s in ("s3", "prefect", "mlflow") if s in services]
    errors = []
    with ThreadPoolExecutor(len(first) or 1) as pool:
        futs = {s: pool.submit(_start_one, s, cfg) for s in first}
        for s, f in futs.items():
            try:
                print(f.result(), flush=True)
            except StackError as e:
                errors.append(str(e))
    if not errors and "prefect" in services:
        try:
            ensure_work_pools(cfg, service_env(cfg, "prefect"))  # a Prefect client: no S3 keys
            print(ensure_zombie_automation(cfg), flush=True)
        except StackError as e:
            errors.append(str(e))
    if not errors and "worker" in services:
        try:
            print(_start_one("worker", cfg), flush=True)
        except StackError as e:
            errors.append(str(e))
    if errors:
        raise StackError("stack did not come up:\n  " + "\n  ".join(errors))
    env_file = cfg.run_dir / "stack.env"
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in cfg.public_env().items()))
    print(f"stack up in {cfg.run_dir}  (source {env_file} for the endpoints)")
    print(f"  Prefect UI  http://{HOST}:{cfg.prefect_port}\n  MLflow UI   {cfg.mlflow_uri}\n"
          f"  S3 API      {cfg.s3_endpoint}  bucket {cfg.bucket}")


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
