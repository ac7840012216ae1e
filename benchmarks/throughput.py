"""Measure CIVIC's own overhead: dataset import speed and end-to-end duty throughput.

Method: a private CIVIC home with the embedded PostgreSQL; a model whose run is `cp {input}
{output}` (so the time measured is CIVIC's — protocol, leasing, validation, process start — not
the model's); N one-record duties; C citizens as local processes with a given prefetch; wall
time from spawning the citizens to the last duty verified. Each configuration runs once per
invocation; run it a few times and compare medians. See RESULTS.md for figures and the machine.

Usage: python benchmarks/throughput.py [--duties 2000] [--citizens 2] [--prefetch 1 4]
       [--replication 1 2] [--import-records 1000000]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

from civic import store
from civic.citizen.runtimes import Joining, ProcessRuntime
from civic.config import load_settings
from civic.server.runner import ServerThread
from civic.server.service import ServerOptions
from civic.store import catalog

MANIFEST = """\
name: echo{replication}
run: cp {{input}} {{output}}
replication: {replication}
timeout: 30
"""


def write_records(path: Path, count: int) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["n"])
        writer.writerows([n] for n in range(count))
    return path


def import_speed(url: str, root: Path, records: int) -> None:
    data = write_records(root / "import.csv", records)
    model = root / "import-model"
    model.mkdir()
    (model / "civic.yaml").write_text(MANIFEST.format(replication=1))
    catalog.add_model(url, model)
    for per_duty in (1, 100):
        started = time.perf_counter()
        imported = catalog.import_dataset(url, "echo1", data, records_per_duty=per_duty,
                                          again=True)
        elapsed = time.perf_counter() - started
        print(f"import {records} records, {per_duty}/duty → {imported.duties} duties: "
              f"{elapsed:.2f}s, {records / elapsed:,.0f} records/s")


def duty_throughput(url: str, root: Path, duties: int, citizens: int, prefetch: int,
                    replication: int) -> None:
    model = root / f"model-r{replication}-p{prefetch}"
    model.mkdir()
    (model / "civic.yaml").write_text(MANIFEST.format(replication=replication))
    (model / "run.txt").write_text(f"prefetch {prefetch}")  # a bundle of its own per run
    added = catalog.add_model(url, model)
    data = write_records(root / f"duties-{duties}.csv", duties)
    # One machine: its citizens are the distinct sources (as in `civic run`).
    imported = catalog.import_dataset(url, added.name, data, again=True, distinct="citizen")
    server = ServerThread(url, ServerOptions(host="127.0.0.1", port=0, grace=2))
    host, port = server.start()
    runtime = ProcessRuntime(root / "citizens", root / "logs")
    names = [f"bench-{replication}-{prefetch}-{i}" for i in range(citizens)]
    started = time.perf_counter()
    joining = Joining(f"{host}:{port}", prefetch, token=catalog.join_token(url))
    spawned = runtime.spawn(joining, names)
    try:
        while catalog.progress(url, imported.id)["pending"]:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        runtime.stop(spawned)
        server.stop()
    done = catalog.progress(url, imported.id)["done"]
    print(f"{duties} duties × replication {replication}, {citizens} citizens, prefetch "
          f"{prefetch}: {elapsed:.2f}s, {done / elapsed:,.0f} duties/s, "
          f"{done * replication / elapsed:,.0f} replicas/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duties", type=int, default=2000)
    parser.add_argument("--citizens", type=int, default=2)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--replication", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--import-records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["CIVIC_HOME"] = str(root / "home")
        url = store.embedded_url(load_settings().home)
        store.migrate(url)
        print(f"machine: {os.cpu_count()} cores; PostgreSQL: embedded (Unix socket)")
        for replication in args.replication:
            for prefetch in args.prefetch:
                duty_throughput(url, root, args.duties, args.citizens, prefetch, replication)
        if args.import_records:  # last: its duties stay pending and would be leased first
            import_speed(url, root, args.import_records)


if __name__ == "__main__":
    main()
