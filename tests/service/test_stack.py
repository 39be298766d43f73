"""The local stack: comes up healthy, loopback only, no secrets in logs, idempotent `up`,
clear errors for busy ports and unreachable servers."""

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack


def listening_addresses(ports: set[int]) -> dict[int, set[str]]:
    """Local addresses (hex IPv4 / IPv6) of LISTEN sockets on `ports`, from /proc/net/tcp*."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) in ports:
                found.setdefault(int(port, 16), set()).add(addr)
    return found


def test_stack_is_up_and_healthy(stack):
    out = stack.sh("status")
    for svc in ("s3", "prefect", "mlflow", "worker"):
        assert f"{svc}" in out.stdout and "UNHEALTHY" not in out.stdout, out.stdout
    assert out.stdout.count("healthy") == 4, out.stdout
    env_file = (stack.run_dir / "stack.env").read_text()
    assert stack.prefect_api in env_file and stack.mlflow_uri in env_file
    for svc in ("s3", "prefect", "mlflow", "worker"):
        assert (stack.run_dir / "logs" / f"{svc}.log").stat().st_size > 0


def test_servers_bind_loopback_only(stack):
    ports = {int(stack.env[k]) for k in stack.env if k.startswith("LOLCATS_") and k.endswith("_PORT")}
    found = listening_addresses(ports)
    assert {int(stack.env["LOLCATS_PREFECT_PORT"]), int(stack.env["LOLCATS_MLFLOW_PORT"]),
            int(stack.env["LOLCATS_S3_PORT"])} <= set(found)
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    assert all(addrs <= loopback for addrs in found.values()), found


def test_no_credentials_in_logs_or_files(stack):
    for f in stack.run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".log", ".env", ".pid"):
            assert stack.env["AWS_SECRET_ACCESS_KEY"] not in f.read_text(errors="replace"), f"secret leaked in {f}"


def test_up_is_idempotent(stack):
    t0 = time.monotonic()
    out = stack.sh("up")
    assert out.stdout.count("already up") == 4, out.stdout
    assert time.monotonic() - t0 < 20


def test_busy_port_gives_clear_error(stack, tmp_path):
    """A second stack on the first one's Prefect port fails fast, naming service and port."""
    other = stack.clone(tmp_path / "other")
    out = other.sh("up", "prefect", check=False)
    assert out.returncode == 1
    port = stack.env["LOLCATS_PREFECT_PORT"]
    assert "prefect cannot start" in out.stderr and port in out.stderr, out.stderr
    assert not (tmp_path / "other" / "pids" / "prefect.pid").exists()


def test_service_that_dies_names_its_log(stack, tmp_path, port):
    """A server that exits during start-up: the error names it, its port, its log file and
    shows the log's last lines (here: MLflow on a corrupt SQLite file)."""
    bad = stack.clone(tmp_path / "bad", LOLCATS_MLFLOW_PORT=str(port()))
    (tmp_path / "bad" / "mlflow").mkdir(parents=True)
    (tmp_path / "bad" / "mlflow" / "mlflow.db").write_text("this is not a sqlite database")
    out = bad.sh("up", "mlflow", check=False)
    assert out.returncode == 1
    log = tmp_path / "bad" / "logs" / "mlflow.log"
    assert f"mlflow (127.0.0.1:{bad.env['LOLCATS_MLFLOW_PORT']}) exited during start-up" in out.stderr
    assert str(log) in out.stderr and "file is not a database" in out.stderr, out.stderr
    assert bad.pid("mlflow") is None  # nothing left to stop


def test_unreachable_servers_give_clear_errors(stack, port):
    from tasks.artifacts import S3Settings, StoreUnreachable, upload_dir
    from tasks.health import ServiceUnreachable, check_mlflow, check_prefect, check_s3
    from tasks.mlflow_registry import VersionInfo, register_version

    dead = f"http://127.0.0.1:{port()}"
    for check, var in ((check_prefect, "PREFECT_API_URL"), (check_mlflow, "MLFLOW_TRACKING_URI")):
        t0 = time.monotonic()
        with pytest.raises(ServiceUnreachable) as e:
            check(dead)
        assert time.monotonic() - t0 < 5
        assert dead in str(e.value) and "deploy/stack.sh up" in str(e.value) and var in str(e.value)
    dead_s3 = S3Settings(endpoint=dead, bucket="x", access_key="a", secret_key="b", retry_seconds=1)
    with pytest.raises(ServiceUnreachable, match="S3 is not reachable"):
        check_s3(dead_s3)
    with pytest.raises(StoreUnreachable, match="unreachable while trying to"):
        upload_dir(stack.run_dir / "logs", "x/y", settings=dead_s3)
    with pytest.raises(ServiceUnreachable, match="MLflow tracking server is not reachable"):
        register_version("lolcats-x", stack.run_dir / "logs",
                         VersionInfo("f", "b", "r", "d"), tracking_uri=dead)
    # The running stack passes the same checks.
    assert check_prefect() and check_mlflow() and check_s3()
