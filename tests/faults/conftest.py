"""Fault drills: the `faults` marker, the `cluster` fixture (stopped even when a drill fails)
and the figures the drills measure, printed in the terminal summary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from drill_figures import Figures
from faultkit import Cluster

_FIGURES = Figures("fault drill figures")
pytest_terminal_summary = _FIGURES.summary
figures = _FIGURES.fixture()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault drills driving real processes")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A private CIVIC_HOME on 127.0.0.1; every process started through it is stopped after."""
    drill = Cluster(tmp_path)
    try:
        yield drill
    finally:
        drill.close()
