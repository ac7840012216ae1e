"""Fault drills: the `faults` marker, the `cluster` fixture (stopped even when a drill fails)
and the figures the drills measure, printed in the terminal summary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import Cluster

_FIGURES: list[tuple[str, dict[str, Any]]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault drills driving real processes")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("fault drill figures")
        for name, figures in _FIGURES:
            terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}"
                                                                for k, v in figures.items()))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A private CIVIC_HOME on 127.0.0.1; every process started through it is stopped after."""
    drill = Cluster(tmp_path)
    try:
        yield drill
    finally:
        drill.close()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What a drill measured (kept even when it fails), shown in the terminal summary."""
    measured: dict[str, Any] = {}
    yield measured
    if measured:
        _FIGURES.append((request.node.name, measured))
