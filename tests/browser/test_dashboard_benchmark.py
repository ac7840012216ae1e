"""The dashboard benchmark runs to the end (`--quick`): a smoke test, nothing about speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_dashboard_benchmark_measures_every_arm(tmp_path: Path, playwright: Any) -> None:
    report = tmp_path / "DASHBOARD.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dashboard.py"), "--quick",
                           "--output", str(report)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in report.read_text().splitlines() if line.startswith("| ")]
    for prefetch in (1, 32):
        for arm in ("none", "open", "reload"):
            row = next((r for r in rows if r.startswith(f"| {prefetch} | {arm} |")), None)
            assert row is not None, f"prefetch {prefetch}, {arm}: no row in\n{report.read_text()}"
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[2] != "–", row  # a rate was measured
            if arm != "none":
                assert int(cells[7].split()[0]) >= 1, row  # the browser read the overview
