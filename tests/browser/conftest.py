"""Browser tests: Debian's Chromium driven by Playwright's sync API against a real CIVIC run.

Without /usr/bin/chromium (or Playwright) these tests skip with the reason; with CI=true they
fail instead, so CI can never pass by skipping them (as tests/docker does for the engine).

The run is a fault drill's :class:`faultkit.Cluster` (tests/faults/faultkit.py): a private
CIVIC_HOME with its embedded PostgreSQL, `civic server run --web` and citizen agents as real
processes, all stopped after the test. Screenshots go to the test's tmp dir; the documentation's
images also to ``$CIVIC_SCREENSHOTS`` when set (``CIVIC_SCREENSHOTS=docs/images pytest
tests/browser`` regenerates them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import chromium  # tests/browser/chromium.py
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "faults"))
from faultkit import Cluster  # noqa: E402

SCREENSHOTS = "CIVIC_SCREENSHOTS"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.browser)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright's driver (bundled in its wheel: nothing is downloaded). Module-scoped: while
    the sync API is open, an event loop counts as running in this thread, so every later test's
    asyncio.run() would fail."""
    if not chromium.available():
        _unavailable(f"no browser at {chromium.EXECUTABLE} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"Playwright is not installed (pip install -e '.[test]'): {exc}")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser(playwright: Any, tmp_path: Path) -> Iterator[Any]:
    """Chromium on a new, empty profile of this test's own (a Playwright BrowserContext)."""
    context = chromium.launch(playwright, tmp_path / "chromium")
    context.set_default_timeout(30_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A tab. Whatever the test does, no dialog may open (a model's output or a citizen's name
    that ran as script would open one) and no script of the page may throw."""
    tab = browser.pages[0] if browser.pages else browser.new_page()
    dialogs: list[str] = []
    errors: list[str] = []

    def dialog(d: Any) -> None:
        dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    tab.on("dialog", dialog)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    assert not dialogs, f"the page opened dialogs: {dialogs}"
    assert not errors, f"the page's scripts threw: {errors}"


@pytest.fixture
def shoot(tmp_path: Path) -> Callable[..., Path]:
    """``shoot(page, name, doc=False)``: a full-page screenshot in the test's tmp dir; with
    ``doc`` also in $CIVIC_SCREENSHOTS (the documentation's images) when that is set."""
    def take(tab: Any, name: str, doc: bool = False) -> Path:
        path = tmp_path / "screenshots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(path), full_page=True)
        target = os.environ.get(SCREENSHOTS)
        if doc and target:
            Path(target).mkdir(parents=True, exist_ok=True)
            (Path(target) / path.name).write_bytes(path.read_bytes())
        return path
    return take


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A private CIVIC_HOME on 127.0.0.1; every process started through it is stopped after."""
    drill = Cluster(tmp_path)
    try:
        yield drill
    finally:
        drill.close()
