"""Run untrusted Python programs (a model's completion plus its tests) in child processes.

Each program runs in its own `python -I -B` process, never in the caller: a throw-away
temporary directory as cwd, HOME and TMPDIR; `resource` limits on CPU seconds, address
space, file size, processes and core dumps; a wall-clock timeout that kills the whole
process group; stdin at EOF; stdout and stderr captured to a size-limited file and
truncated. A prelude installs an audit hook (`sys.addaudithook`) that refuses sockets,
new processes and signals, and file writes, renames and deletions outside the sandbox
directory. Where `unshare -n` works (root, or user namespaces) the process also gets a
network namespace of its own, with no interface up.

This guards against the accidents of generated code (writing files, opening connections,
looping forever), not against code written to escape: ctypes or `dir_fd` tricks can get
past an audit hook. Run it as an unprivileged user inside a container for hostile code.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tqdm.auto import tqdm

# Runs as `python -c _PRELUDE CPU_SECONDS ADDRESS_SPACE FILE_SIZE` with cwd = the sandbox.
_PRELUDE = r"""
import os, resource, sys

def _limit(name, soft, hard):
    kind = getattr(resource, name)
    cap = resource.getrlimit(kind)[1]
    if cap != resource.RLIM_INFINITY:
        soft, hard = min(soft, cap), min(hard, cap)
    resource.setrlimit(kind, (soft, hard))

_cpu, _memory, _fsize = map(int, sys.argv[1:4])
_limit("RLIMIT_CPU", _cpu, _cpu + 1)
_limit("RLIMIT_AS", _memory, _memory)
_limit("RLIMIT_FSIZE", _fsize, _fsize)
_limit("RLIMIT_NPROC", 1, 1)
_limit("RLIMIT_CORE", 0, 0)

_ROOT = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_PATH_EVENTS = {  # event -> positions of its path arguments
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
    "os.link": (0, 1), "os.symlink": (0, 1), "os.truncate": (0,), "os.chmod": (0,),
    "os.chown": (0,), "os.utime": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,),
}
_PROCESS_EVENTS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg",
}

def _inside(path):
    if path is None or isinstance(path, int):  # an already open descriptor
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real == _ROOT or real.startswith(_ROOT + os.sep)

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        allowed = not writes or _inside(path)
    elif event in _PATH_EVENTS:
        allowed = all(_inside(args[i]) for i in _PATH_EVENTS[event])
    else:
        allowed = not (event.startswith("socket.") or event in _PROCESS_EVENTS)
    if not allowed:
        raise PermissionError(f"sandbox: {event}{args!r} refused")

with open("program.py", encoding="utf-8") as _f:
    _source = _f.read()
sys.argv = ["program.py"]
sys.addaudithook(_hook)
exec(compile(_source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program.

    Attributes:
        passed: it exited with status 0 within the limits.
        status: "passed", "failed" (non-zero exit, e.g. a failed assert or a syntax error),
            "timeout" (wall clock or CPU limit) or "error" (killed by another signal, e.g.
            the file-size limit, or the sandbox could not start it).
        message: the last line of its output (e.g. "AssertionError"), or why it stopped.
    """

    passed: bool
    status: str
    message: str


@cache
def _network_wrapper() -> tuple[str, ...]:
    """`unshare -n` (or `-rn` without root) when it works here; () otherwise."""
    for command in (("unshare", "-n"), ("unshare", "-rn")):
        if shutil.which(command[0]) is None:
            return ()
        try:
            probe = subprocess.run([*command, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return ()


def run_program(
    program: str, *, timeout: float = 20.0, memory_bytes: int = 2 << 30,
    max_file_bytes: int = 16 << 20, max_output_chars: int = 2000,
) -> SandboxResult:  # fmt: skip
    """Run `program` (Python source) in a fresh sandboxed process and report how it ended.

    Args:
        timeout: wall-clock seconds; the CPU limit is the same, rounded up.
        memory_bytes: address-space limit (RLIMIT_AS).
        max_file_bytes: largest file it may write, its captured output included.
        max_output_chars: the output tail kept for `message`.
    """
    with tempfile.TemporaryDirectory(prefix="lolcats-sandbox-", ignore_cleanup_errors=True) as root:
        work, log = Path(root, "work"), Path(root, "output.txt")
        work.mkdir()
        (work / "program.py").write_text(program, encoding="utf-8")
        env = {"HOME": str(work), "TMPDIR": str(work), "PATH": os.defpath, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
        limits = [str(int(timeout) + 1), str(memory_bytes), str(max_file_bytes)]
        command = [*_network_wrapper(), sys.executable, "-I", "-B", "-c", _PRELUDE, *limits]
        with log.open("wb") as out:
            try:
                proc = subprocess.Popen(
                    command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                return SandboxResult(False, "error", f"could not start: {e}")
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                if proc.poll() is None:  # timed out, or the caller was interrupted
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        output = log.read_bytes()[-max_output_chars:].decode("utf-8", "replace")
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")[:300]
    if code is None:
        return SandboxResult(False, "timeout", f"timed out after {timeout:g} s")
    if code == 0:
        return SandboxResult(True, "passed", last)
    if code > 0:
        return SandboxResult(False, "failed", last or f"exit status {code}")
    name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
    status = "timeout" if -code in (signal.SIGXCPU, signal.SIGKILL) else "error"
    return SandboxResult(False, status, f"killed by {name}" + (f": {last}" if last else ""))


def run_programs(
    programs: Sequence[str], *, workers: int | None = None, progress: bool = False, **limits
) -> list[SandboxResult]:
    """`run_program` over many programs, `workers` (default: os.cpu_count()) at a time, in order.

    `limits` are passed on to `run_program` (timeout, memory_bytes, ...).
    """
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: run_program(p, **limits), programs)
        return list(tqdm(results, total=len(programs), desc="execute", disable=not progress, leave=False))
