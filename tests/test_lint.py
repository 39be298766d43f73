"""The repository passes `ruff check` with the configuration in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ruff_command() -> list[str]:
    """ruff from this interpreter's environment (the dev extra), else from PATH."""
    try:
        import ruff  # noqa: F401
    except ImportError:
        exe = shutil.which("ruff")
        if exe is None:
            pytest.fail("ruff is not installed: pip install -e '.[dev]'")
        return [exe]
    return [sys.executable, "-m", "ruff"]


def test_ruff_check_passes():
    out = subprocess.run([*ruff_command(), "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"ruff check found violations:\n{out.stdout}{out.stderr}"
