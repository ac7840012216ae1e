"""Docker fixtures: a real engine, local base images, and an instance name per test whose
containers, volumes and networks are all removed afterwards, even when the test fails.

Without an engine these tests skip with the reason; with CI=true they fail instead, so CI can
never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import images as base_images  # tests/docker/images.py
import pytest
from civic_cli import Civic
from drill_figures import Figures
from docker_objects import remove_instance


_FIGURES = Figures("docker drill figures")
pytest_terminal_summary = _FIGURES.summary
figures = _FIGURES.fixture()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def engine() -> Any:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine answers: {exc}")
    return client


@pytest.fixture(scope="session")
def local(engine: Any) -> dict[str, str]:
    """Local base images (no registry here) and the images CIVIC builds from them, built the
    way a user would: ``civic image build --base ... --wheelhouse ...``."""
    cache = Path(os.environ.get("CIVIC_TEST_CACHE") or base_images.default_cache_dir())
    try:
        tags = base_images.ensure_base_images(cache)
        wheels = base_images.wheelhouse(cache)
    except base_images.BaseImageError as exc:  # e.g. not root, no debootstrap
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the local base images cannot be built: {exc}")
        pytest.skip(f"cannot build the local base images: {exc}")
    builder = Civic(cache / "builder-home")
    built = builder("image", "build", "--base", tags["python"], "--wheelhouse", str(wheels),
                    timeout=900)
    assert built.returncode == 0, built.stderr
    return {**tags, "wheels": str(wheels)}


@pytest.fixture
def lab(tmp_path: Path, engine: Any, local: dict[str, str]) -> Iterator[Civic]:
    """``civic`` with its own home and Docker instance name; everything labelled with that
    instance is removed at the end."""
    instance = f"civic-test-{uuid.uuid4().hex[:8]}"
    runner = Civic(tmp_path / "home", CIVIC_INSTANCE=instance)
    runner.instance = instance  # type: ignore[attr-defined]
    try:
        yield runner
    finally:
        runner.stop_all()
        remove_instance(engine, instance)
