"""Shared test settings: every test runs with its own CIVIC_HOME, never the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVIC_HOME", str(tmp_path_factory.mktemp("civic-home")))
    monkeypatch.delenv("CIVIC_DATABASE_URL", raising=False)
