"""Locked storage (deploy/stack.py, "SeaweedFS security"): no port the storage service opens
takes an anonymous write or delete, while the stack's own S3 client with keys still works.

What the local stack protects: every TCP port and unix socket of `weed mini` (S3 gateway,
master, volume, filer, admin, each gRPC port + 10000 and weed's sockets in /tmp), found from
/proc, not from a list. The Prefect API and the MLflow API (with its artifact proxy) are the
service's own APIs: locally they have no authentication and are bound to 127.0.0.1 only
(test_stack.py::test_servers_bind_loopback_only); deploy/CLUSTER.md puts both behind
authentication and TLS. The S3 keys live only in the processes that use them."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

# unauthorized, forbidden, no such route, method not allowed; 400: a path that is no file id
# (volume server), answered before any write (assert_untouched checks nothing changed)
REFUSED = {400, 401, 403, 404, 405}
KEY = "locked/checkpoint.bin"
BODY = b"a checkpoint the anonymous client must not touch"


def _group(pgid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append(int(p.name))
            except (OSError, ValueError):
                continue
    return out


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def listening(pids: list[int]) -> tuple[set[int], set[str]]:
    """(TCP ports, unix socket paths) the processes `pids` listen on, from /proc/net."""
    inodes = _socket_inodes(pids)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[6] in inodes and f[5] == "01":  # 01: listening
            paths.add(f[7])
    return ports, paths


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def anonymous(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    """Status of an anonymous request, or the name of the error that refused it."""
    try:
        conn.request(method, path, body=body)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:  # reset, closed, not HTTP/1.1 (gRPC)
        return type(e).__name__
    finally:
        conn.close()


def requests(bucket: str) -> list[tuple[str, str, bytes | None]]:
    """Anonymous writes and deletes aimed at each SeaweedFS API (every one goes to every port)."""
    return [
        ("PUT", f"/{bucket}/{KEY}", b"evil"),  # S3
        ("DELETE", f"/{bucket}/{KEY}", None),
        ("DELETE", f"/{bucket}", None),
        ("PUT", f"/buckets/{bucket}/{KEY}", b"evil"),  # filer
        ("POST", f"/buckets/{bucket}/locked/", b"evil"),
        ("DELETE", f"/buckets/{bucket}/{KEY}", None),
        ("DELETE", f"/buckets/{bucket}/locked/?recursive=true", None),
        ("POST", "/dir/assign", None),  # master: a write ticket, a collection delete, growth
        ("POST", f"/col/delete?collection={bucket}", None),
        ("POST", "/vol/grow?count=1", None),
        ("POST", "/submit", b"evil"),
        ("PUT", "/1,01637037d6", b"evil"),  # volume: a needle write and delete
        ("DELETE", "/1,01637037d6", None),
        ("DELETE", "/", None),
    ]


@pytest.fixture(scope="module")
def weed(stack):
    """The stored object, the S3 client, and the ports and sockets of the storage service."""
    from tasks.artifacts import S3Settings, client

    settings = S3Settings.from_env()
    s3 = client(settings)
    s3.put_object(Bucket=settings.bucket, Key=KEY, Body=BODY)
    pids = _group(stack.pid("s3"))
    ports, sockets = listening(pids)
    return {"s3": s3, "bucket": settings.bucket, "ports": ports, "sockets": sockets, "pids": pids}


def assert_untouched(weed) -> None:
    s3, bucket = weed["s3"], weed["bucket"]
    assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == BODY
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="locked/").get("Contents", [])]
    assert keys == [KEY], keys


def test_the_storage_ports_are_the_expected_ones(stack, weed):
    cfg = stack.config
    http_ports = {cfg.s3_port, cfg.weed_master_port, cfg.weed_volume_port, cfg.weed_filer_port,
                  cfg.weed_admin_port}
    assert http_ports | {p + 10000 for p in http_ports} <= weed["ports"], weed["ports"]
    assert weed["sockets"], "weed opened no unix socket (expected its gRPC sockets in /tmp)"


def test_anonymous_writes_and_deletes_are_refused_on_every_storage_port(stack, weed):
    refused = {}
    for port in sorted(weed["ports"]):
        for method, path, body in requests(weed["bucket"]):
            got = anonymous(http.client.HTTPConnection("127.0.0.1", port, timeout=5), method, path, body)
            if (port, path, got) == (stack.config.weed_master_port, "/", 200):
                continue  # the master's read-only status page ignores the method; nothing deleted
            assert got not in range(200, 400), f"anonymous {method} {path} on port {port}: {got}"
            assert isinstance(got, str) or got in REFUSED, f"{method} {path} on {port}: {got}"
            refused.setdefault(port, set()).add(got)
    # the keyed ports say why: S3 403, the volume server 401 (no JWT), master/filer 404 (no HTTP API)
    cfg = stack.config
    assert refused[cfg.s3_port] <= {403, 405}, refused[cfg.s3_port]
    assert 401 in refused[cfg.weed_volume_port], refused[cfg.weed_volume_port]
    assert refused[cfg.weed_master_port] <= {404, 405} and refused[cfg.weed_filer_port] <= {404, 405}
    assert_untouched(weed)


def test_anonymous_writes_and_deletes_are_refused_on_weeds_unix_sockets(weed):
    for path in sorted(weed["sockets"]):
        for method, url, body in requests(weed["bucket"]):
            got = anonymous(UnixHTTPConnection(path), method, url, body)
            assert isinstance(got, str) or got in REFUSED, f"anonymous {method} {url} on {path}: {got}"
    assert_untouched(weed)


def test_grpc_ports_demand_a_client_certificate(stack, weed):
    """Every gRPC port (port + 10000) speaks TLS only to a client with the stack's certificate."""
    cfg = stack.config
    for port in (p + 10000 for p in (cfg.s3_port, cfg.weed_master_port, cfg.weed_volume_port,
                                      cfg.weed_filer_port, cfg.weed_admin_port)):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        with pytest.raises((ssl.SSLError, ConnectionError)), socket.create_connection(
                ("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            tls.recv(1)  # TLS 1.3: the server's "certificate required" alert arrives here


SHELL_SECONDS = 10  # the anonymous shell's time; the control needs a fraction of it (below)


def _weed_shell(stack, home: Path, script: str, config_dir: Path | None = None) -> str:
    weed = str(Path(sys.executable).parent / "weed")
    pre = [f"-config_dir={config_dir}"] if config_dir else []
    try:
        out = subprocess.run([weed, *pre, "shell", f"-master=127.0.0.1:{stack.config.weed_master_port}"],
                             input=script, capture_output=True, text=True, timeout=SHELL_SECONDS, cwd=home,
                             env={"PATH": os.environ["PATH"], "HOME": str(home)})
        return out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:  # no certificate: it keeps retrying the master
        return f"timed out: {e.stdout or ''}"


def test_weed_shell_without_the_certificate_cannot_delete(stack, weed, tmp_path):
    """The tool a hostile tester reaches for: `weed shell` over gRPC. Without the stack's
    certificate `fs.rm` does nothing in SHELL_SECONDS; with it (the positive control) the shell
    sees the file in under half that time (about 0.4 s), so the anonymous one had time enough."""
    out = _weed_shell(stack, tmp_path, f"fs.rm /buckets/{weed['bucket']}/{KEY}\n")
    assert_untouched(weed)
    t0 = time.monotonic()
    listed = _weed_shell(stack, tmp_path, f"fs.ls /buckets/{weed['bucket']}/locked\n",
                         config_dir=stack.run_dir / "weed-security")
    took = time.monotonic() - t0
    assert "checkpoint.bin" in listed, f"control failed: {listed[-800:]}\n(anonymous: {out[-300:]})"
    assert took < SHELL_SECONDS / 2, f"the control took {took:.1f} s: give the anonymous shell longer"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)


def test_credentials_only_in_the_processes_that_use_them(stack, weed):
    secret = stack.env["AWS_SECRET_ACCESS_KEY"]
    prefect = _environ(stack.pid("prefect"))
    assert secret not in "\0".join(prefect.values()) and "AWS_SECRET_ACCESS_KEY" not in prefect
    assert not any(k.startswith("WEED_") for k in prefect)
    for svc in ("s3", "mlflow", "worker"):
        assert _environ(stack.pid(svc)).get("AWS_SECRET_ACCESS_KEY") == secret, svc
    for svc in ("mlflow", "worker"):
        assert not any(k.startswith("WEED_JWT") for k in _environ(stack.pid(svc))), svc
    weed_env = _environ(stack.pid("s3"))
    jwt = [weed_env.get(k) for k in ("WEED_JWT_SIGNING_KEY", "WEED_JWT_FILER_SIGNING_KEY")]
    assert all(k and len(k) >= 32 for k in jwt), "weed runs without JWT keys"
    sec = stack.run_dir / "weed-security"
    assert (sec / "weed.key").stat().st_mode & 0o077 == 0 and sec.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in sec.iterdir()) == ["ca.pem", "security.toml", "weed.key", "weed.pem"]
    text = (sec / "security.toml").read_text() + "".join(
        (stack.run_dir / "logs" / f"{s}.log").read_text(errors="replace") for s in ("s3", "prefect", "mlflow"))
    assert not any(k in text for k in jwt) and secret not in text
