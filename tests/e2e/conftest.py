"""The ``civic`` fixture: a runner of the installed command with a private CIVIC_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from civic_cli import Civic


@pytest.fixture
def civic(tmp_path: Path) -> Iterator[Civic]:
    runner = Civic(tmp_path / "home")
    yield runner
    runner.stop_all()
