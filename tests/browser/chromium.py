"""Debian's Chromium, driven by Playwright: nothing downloaded, nothing reached but 127.0.0.1.

Playwright's pip wheel carries its own driver (a Node binary and its JavaScript package under
``playwright/driver``), so launching needs no network and no ``playwright install``: the browser
is ``/usr/bin/chromium`` from Debian's ``chromium`` package (CI installs it). Every name but
127.0.0.1 resolves to "not found" inside the browser, so it sends no DNS query either (without
that rule it looks up accounts.google.com and update.googleapis.com at start, whatever the
other flags say). The benchmark (benchmarks/dashboard.py) launches it through this module too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EXECUTABLE = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
VIEWPORT = {"width": 1280, "height": 900}


def available() -> bool:
    return os.access(EXECUTABLE, os.X_OK)


def launch(playwright: Any, root: Path) -> Any:
    """A browser on a new, empty profile in ``root`` (its HOME too: Debian's wrapper and the
    crash reporter write under ~/.config). Returns a Playwright BrowserContext; close it."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(root), "XDG_CONFIG_HOME": str(root / "config"),
           "XDG_CACHE_HOME": str(root / "cache")}
    return playwright.chromium.launch_persistent_context(
        str(root / "profile"), executable_path=EXECUTABLE, args=ARGS, headless=True,
        env=env, viewport=VIEWPORT, locale="en-GB", timezone_id="UTC")
