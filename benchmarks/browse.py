"""A browser on the dashboard, in a process of its own, for benchmarks/dashboard.py.

Usage: python benchmarks/browse.py URL MODE ROOT
  MODE ``open``: open URL and leave it (the overview refreshes itself every 5 s, civic.js);
  MODE ``reload:S``: open URL and reload it every S seconds (harsher than any reader).

Debian's Chromium through Playwright, launched as tests/browser/chromium.py launches it (new
profile under ROOT, nothing downloaded, no DNS). Prints ``ready`` once the page has loaded,
keeps the page (and Playwright's event loop) going until stdin closes, then prints one JSON
line: the reads of URL the page made after ``ready`` (reloads and civic.js refreshes), over
how many seconds, and the CPU seconds the browser's processes (this one, Playwright's driver and
Chromium's) used over that time.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "browser"))

import chromium  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU of ``root`` and every live descendant, and of the children they reaped."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rindex(")") + 2:].split()
            parents[int(entry)] = int(fields[1])
            ticks[int(entry)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total / TICK


def closed(stdin: int, wait: float | None) -> bool:
    """Whether stdin reached its end, waiting up to ``wait`` seconds for it (None: until)."""
    ready, _, _ = select.select([stdin], [], [], wait)
    return bool(ready) and not os.read(stdin, 4096)


def main() -> None:
    url, mode, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    every = float(mode.split(":", 1)[1]) if mode.startswith("reload:") else None
    path = urlsplit(url).path or "/"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = chromium.launch(driver, root)
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.goto(url, wait_until="load")
            reads: list[float] = []
            page.on("request", lambda r: reads.append(time.monotonic())
                    if urlsplit(r.url).path == path else None)
            started, cpu = time.monotonic(), tree_cpu_seconds(os.getpid())
            print("ready", flush=True)
            # Between reloads this process only waits on stdin: it polls nothing (a poll
            # through Playwright would cost CPU the browser does not), and the page's events
            # queue in Playwright's pipe until the next call takes them.
            due = started
            while not closed(sys.stdin.fileno(), None if every is None else
                             max(0.0, due - time.monotonic())):
                if every is not None and time.monotonic() >= due:
                    due = time.monotonic() + every
                    page.reload(wait_until="load")
            seconds, cpu = time.monotonic() - started, tree_cpu_seconds(os.getpid()) - cpu
            page.evaluate("1")  # the events still queued are taken: the reads are counted
        finally:
            browser.close()
    print(json.dumps({"reads": len(reads), "seconds": seconds, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
