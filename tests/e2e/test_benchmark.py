"""The benchmark command runs to the end (`--quick`): a smoke test, nothing about speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_benchmark_writes_every_phase(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                           "--output", str(results)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = results.read_text()
    for phase in ("P1 ", "P1e ", "P2 ", "P3 ", "P4 ", "P6 "):
        assert f"## {phase}" in text, f"{phase.strip()} missing from RESULTS.md"
