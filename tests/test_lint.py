"""The code base stays ruff clean and type-checks (mypy; --strict on the scheduler's pure core)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_check_and_format() -> None:
    ruff = BIN / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed (dev extras)")
    check = subprocess.run([str(ruff), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([str(ruff), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


@pytest.mark.slow
def test_mypy() -> None:
    if not (BIN / "mypy").exists() or shutil.which("make") is None:
        pytest.skip("mypy or make is not installed")
    out = subprocess.run(["make", "-s", "typecheck"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
