"""Does a browser on the dashboard slow dispatch? Writes DASHBOARD.md (issue 10: under 5%).

Usage: python benchmarks/dashboard.py [--quick] [--runs N] [--output FILE]

run.py's P1 dispatch run (its Bench: one private embedded PostgreSQL, `civic server run`
subprocesses of this tree, the load generator's simulated citizens), with every server started
with the dashboard beside it (`--web 127.0.0.1:PORT`) in every arm; only the browser differs:

- ``none``: no browser;
- ``open``: Debian's Chromium on the overview, refreshing itself every 5 s (civic.js);
- ``reload``: the same, reloading the overview every second (harsher than any reader).

The arms take turns round by round (so a noisy neighbour spreads over all of them), at prefetch
1 and 32, replication 1; each run lasts until its window's limit. See DASHBOARD.md for the
method and the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ServerProcess, machine, spread  # noqa: E402
from report import _git  # noqa: E402
from run import FULL, QUICK, Bench  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = {"none": None, "open": "open", "reload": "reload:1"}
PREFETCH = (1, 32)
# Enough duties that every run lasts its whole window (`limit` seconds) at this machine's rate.
FULL_SIZES = replace(FULL, runs=5, limit=15.0, p1=60_000, p32=100_000)
QUICK_SIZES = replace(QUICK, runs=1, limit=6.0, p1=15_000, p32=30_000)


class Browser:
    """benchmarks/browse.py in a process of its own, from ``ready`` until ``stop``."""

    def __init__(self, url: str, mode: str, root: Path, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "browse.py"), url, mode, str(root)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"the browser did not start ({line!r}): {log.read_text()[-2000:]}")

    def stop(self) -> dict[str, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            out = self.process.stdout.read()
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return {}
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}


class DashboardBench(Bench):
    """run.py's Bench with the dashboard beside every server, and the current arm's browser
    beside the servers of each dispatch run."""

    def __init__(self, root: Path, sizes: object) -> None:
        super().__init__(root, sizes, None)  # type: ignore[arg-type]
        self.web = True
        self.arm, self.key = "none", ("p1", "none")
        self.browsers = 0
        self.browsed: dict[tuple[str, ...], list[dict[str, float]]] = {}

    @contextlib.contextmanager
    def beside(self, procs: list[ServerProcess]) -> Iterator[None]:
        mode = ARMS[self.arm]
        if mode is None:
            yield
            return
        self.browsers += 1  # a new, empty profile each run
        browser = Browser(procs[0].web_url + "/", mode, self.root / f"chromium-{self.browsers}",
                          self.root / "logs" / "browser.log")
        try:
            yield
        finally:
            self.browsed.setdefault(self.key, []).append(browser.stop())

    def measure(self) -> None:
        # A first run is slower than the next (caches, the first connections): not counted.
        self.arm, self.key = "none", ("warm-up", "none")
        figures = self.dispatch("after", 1, 32, self.sizes.p32)
        self.log(f"warm-up (not counted): {figures['rate']:,.0f} duties/s")
        arms = list(ARMS)
        for round_ in range(self.sizes.runs):
            for prefetch in PREFETCH:
                duties = self.sizes.p1 if prefetch == 1 else self.sizes.p32
                turn = round_ % len(arms)  # no arm always goes first
                for arm in arms[turn:] + arms[:turn]:
                    self.arm, self.key = arm, (f"p{prefetch}", arm)
                    figures = self.dispatch("after", 1, prefetch, duties)
                    self.record_dispatch(self.key, figures)


def write(bench: DashboardBench, args: argparse.Namespace, seconds: float) -> str:
    sizes = bench.sizes
    lines = [
        "# A browser on the dashboard against dispatch",
        "",
        f"Written by `python benchmarks/dashboard.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({seconds / 60:.1f} min); "
        "this file is its output.",
        "",
        f"- Tree: {HERE.parent} ({_git(HERE.parent / 'src')})",
        f"- Machine: {machine()}; load average (1 min) {bench.load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (other work on the machine shows there)",
        f"- PostgreSQL {bench.cluster.version} (embedded; {bench.cluster.settings}); "
        f"Chromium from {_chromium()}",
        "",
        "## Method",
        "",
        "The dispatch run of `benchmarks/run.py` (P1, replication 1; RESULTS.md describes it): "
        f"{sizes.citizens} simulated citizens over TCP answer every duty at once, against one "
        "`civic server run` of this tree on a private embedded PostgreSQL, timed for "
        f"{sizes.limit:.0f} s (each run imports {sizes.p1:,} duties at prefetch 1 and "
        f"{sizes.p32:,} at prefetch 32, more than it can serve in that time). **Every** server "
        "runs with the dashboard beside it (`--web 127.0.0.1:PORT`); only the browser differs:",
        "",
        "- **none**: no browser;",
        "- **open**: Debian's Chromium (headless, through Playwright, as tests/browser launch "
        "it) on the overview, which refreshes itself in place every 5 s (civic.js);",
        "- **reload**: the same, reloading the overview every second — harsher than any "
        "reader (each load also asks for the page's scripts and stylesheet).",
        "",
        "The browser starts with the server and has loaded the page before the window "
        "opens; it stops after the window. After one warm-up run (not counted), the arms take "
        f"turns round by round ({sizes.runs} round(s)), each round starting with the next arm, "
        "so a neighbour's load spreads over all of them. Server, "
        "PostgreSQL, the load generator **and the browser** share this machine's cores: the "
        "browser's own CPU (its column) is taken from what the server could use, which an "
        "operator's browser on another machine would not. Cells read `median (min–max)`; "
        "**vs none** compares medians, **paired** is the median over rounds of each round's "
        "rate over the same round's `none` rate.",
        "",
        "## Results",
        "",
        "| prefetch | browser | duties/s | vs none | paired | server CPU ms/duty | "
        "PostgreSQL CPU ms/duty | overview reads | browser CPU s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for prefetch in PREFETCH:
        p = f"p{prefetch}"
        base = bench.figures.get((p, "none", "rate"), [])
        for arm in ARMS:
            rates = bench.figures.get((p, arm, "rate"), [])
            browsed = bench.browsed.get((p, arm), [])
            versus = paired = "–"
            if arm != "none" and rates and base:
                diff = statistics.median(rates) / statistics.median(base) - 1
                pairs = statistics.median(r / b - 1 for r, b in zip(rates, base))
                versus, paired = f"{diff:+.1%}", f"{pairs:+.1%}"
                verdicts.append((p, arm, diff, pairs))
            reads = spread([b["reads"] for b in browsed if b]) if browsed else "–"
            cpu = spread([b["cpu"] for b in browsed if b], 1) if browsed else "–"
            lines.append(
                f"| {prefetch} | {arm} | {spread(rates)} | {versus} | {paired} | "
                f"{spread(bench.figures.get((p, arm, 'server_ms'), []), 2)} | "
                f"{spread(bench.figures.get((p, arm, 'pg_ms'), []), 2)} | {reads} | {cpu} |")
    lines += ["", "## Verdict", ""]
    if args.quick:
        lines += ["Not judged: a `--quick` run (one round, short windows) checks that the "
                  "benchmark works; its figures are too few to judge by."]
    for p, arm, diff, pairs in [] if args.quick else verdicts:
        slower = max(-diff, -pairs)
        lines.append(f"- {p}, {arm}: {diff:+.1%} (paired {pairs:+.1%}): "
                     + ("within" if slower < 0.05 else "**outside**") + " the 5% the issue allows")
    for key, notes in bench.notes.items():
        lines += ["", f"Notes ({key}):", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _chromium() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        if out:
            return f"Debian's package ({out})"
    return "/usr/bin/chromium"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, short windows")
    parser.add_argument("--runs", type=int, help="rounds (default 5, --quick 1)")
    parser.add_argument("--output", type=Path, default=HERE / "DASHBOARD.md")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.runs:
        sizes = replace(sizes, runs=args.runs)
    if not os.access("/usr/bin/chromium", os.X_OK):
        parser.error("no /usr/bin/chromium: apt-get install chromium")
    started = time.time()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: everything is stopped
    with tempfile.TemporaryDirectory(prefix="civic-dashboard-bench-") as tmp:
        bench = DashboardBench(Path(tmp), sizes)
        try:
            bench.tidy()
            bench.measure()
        finally:
            bench.cluster.stop()
        text = write(bench, args, time.time() - started)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
