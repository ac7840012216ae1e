"""What drills measured, kept even when a drill fails, and printed in pytest's summary.

A conftest makes its own ``Figures("title")`` and exposes ``summary`` as its
``pytest_terminal_summary`` and ``fixture()`` as its ``figures`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


class Figures:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def summary(self, terminalreporter: Any) -> None:
        if self.rows:
            terminalreporter.section(self.title)
            for name, measured in self.rows:
                terminalreporter.write_line(f"{name}: " + ", ".join(
                    f"{k}={v}" for k, v in measured.items()))

    def fixture(self) -> Callable[..., Any]:
        @pytest.fixture
        def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
            """What a drill measured (kept even when it fails), shown in the summary."""
            measured: dict[str, Any] = {}
            yield measured
            if measured:
                self.rows.append((request.node.name, measured))

        return figures
