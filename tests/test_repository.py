"""No tracked file depends on anything outside the repository (a sibling checkout, this machine)."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Spelled in pieces so that this file does not match itself.
FORBIDDEN = re.compile("|".join([re.escape(".." + "/shared"), "(?<![\\w.-])" + re.escape("/" + "work/")]))


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
                           ).stdout.decode().split("\0")
    files = []
    for name in filter(None, names):
        path = REPO / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        files.append(path)
    return files


def test_no_tracked_file_refers_outside_the_repository():
    files = tracked_text_files()
    assert files
    hits = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:160]}")
    assert not hits, "tracked files refer to paths outside the repository:\n" + "\n".join(hits)
