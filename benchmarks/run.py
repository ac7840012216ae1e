"""CIVIC's benchmark: one command that measures what issue 8 asks and writes RESULTS.md.

Usage: python benchmarks/run.py [--quick] [--baseline DIR] [--output FILE] [--runs N]

Everything runs on this machine against one private embedded PostgreSQL (a temporary CIVIC
home, migrated by this tree, pg_stat_statements preloaded). Servers are `civic server run`
subprocesses of this tree ("after") and, with --baseline, of an earlier checkout ("before",
PYTHONPATH=DIR/src, on the schema this tree migrated); so are each variant's process citizens
and imports (variant.py). Each figure is measured --runs times
(3; --quick: 1, small sizes, for CI), the variants and peers of a phase interleaved round by
round, and reported as the median with the range (min–max). See RESULTS.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Cluster, ServerProcess, cpu_seconds, rss_bytes, servers  # noqa: E402
from loadgen import LoadError, Probe, drive, identities  # noqa: E402
from report import write  # noqa: E402

import psycopg  # noqa: E402

from civic.store import catalog  # noqa: E402

HERE = Path(__file__).resolve().parent
TREE = HERE.parent
PHASES = ("P1", "P1e", "P2", "P3", "P4", "P6")


@dataclass(frozen=True)
class Sizes:
    runs: int
    citizens: int  # simulated citizens of the load generator
    p1: int  # duties per P1 run at prefetch 1 (replication 2: half as many duties)
    p32: int  # duties per run at prefetch 32 (P1, P3, P6)
    limit: float  # seconds: a dispatch run stops there even if its duties are not all settled
    peer_jobs: int
    strace: int  # duties per round-trip count under strace (0: skipped)
    p1e: int
    p2: int
    big: int  # P3: queued, then finished, duties
    p4: int  # records per P4 import


FULL = Sizes(runs=3, citizens=64, p1=4000, p32=15000, limit=10.0, peer_jobs=4000, strace=300,
             p1e=400, p2=200, big=1_000_000, p4=300_000)
QUICK = Sizes(runs=1, citizens=16, p1=150, p32=300, limit=5.0, peer_jobs=300, strace=0,
              p1e=40, p2=20, big=10_000, p4=10_000)

CP_MODEL = "name: {name}\nrun: cp {{input}} {{output}}\nreplication: {replication}\ntimeout: 30\n"
BUSY_MODEL = "name: bench-busy\nfiles: [busy]\nrun: ./busy {input} {output}\ntimeout: 60\n"
BUSY_C = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < ITERATIONS; i++) x += i;
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    char buf[65536]; size_t n;
    if (!in || !out) return 1;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    return fclose(out) != 0;
}
"""


class Bench:
    """The cluster, the variants under test, and every figure measured so far."""

    def __init__(self, root: Path, sizes: Sizes, baseline: Path | None) -> None:
        self.root, self.sizes = root, sizes
        self.load = os.getloadavg()
        os.environ["CIVIC_HOME"] = str(root / "home")
        self.cluster = Cluster(root / "home")
        self.url = self.cluster.url
        self.variants = {"after": TREE / "src"}
        if baseline is not None:
            self.variants = {"before": baseline.resolve() / "src", **self.variants}
        self.token = catalog.join_token(self.url)
        self.citizens = identities("loadgen", sizes.citizens)  # kept across runs, as a project's
        self.figures: dict[tuple[str, ...], list[float]] = defaultdict(list)
        self.notes: dict[str, list[str]] = defaultdict(list)
        self.batches: dict[str, bool] = {}
        self._runs = 0
        self.web = False  # dispatch servers with the dashboard beside them (dashboard.py)
        for replication in (1, 2):
            self._model(f"bench-r{replication}", CP_MODEL.format(name=f"bench-r{replication}",
                                                                 replication=replication))

    def add(self, key: tuple[str, ...], value: float | None) -> None:
        if value is not None:
            self.figures[key].append(value)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # --- data -------------------------------------------------------------------------------

    def _model(self, name: str, manifest: str, files: dict[str, Path] | None = None) -> str:
        folder = self.root / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "civic.yaml").write_text(manifest)
        for file_name, source in (files or {}).items():
            shutil.copy2(source, folder / file_name)
        return catalog.add_model(self.url, folder).name

    def records(self, count: int) -> Path:
        path = self.root / f"records-{count}.csv"
        if not path.exists():
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["n"])
                writer.writerows([n] for n in range(count))
        return path

    def import_duties(self, model: str, count: int) -> int:
        return catalog.import_dataset(self.url, model, self.records(count), again=True).id

    def drop(self, *dataset_ids: int) -> None:
        with self.cluster.connect() as db:
            db.execute("DELETE FROM datasets WHERE id = ANY(%s)", (list(dataset_ids),))

    def tidy(self) -> None:
        """Between phases: vacuum what earlier phases deleted and checkpoint, so autovacuum
        and checkpoints do not land in the next phase's windows."""
        with self.cluster.connect() as db:
            db.execute("VACUUM ANALYZE")
            db.execute("CHECKPOINT")

    def in_tree(self, variant: str, args: list[str], log: Path, **popen: object
                ) -> subprocess.Popen[str]:
        """``variant.py ARGS`` in a process of its own, with the variant's tree on PYTHONPATH."""
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(self.variants[variant])}
        with open(log, "a") as err:
            return subprocess.Popen([sys.executable, str(HERE / "variant.py"), *args], env=env,
                                    stderr=err, text=True, **popen)  # type: ignore[call-overload]

    def same_tree(self, variant: str, package: str) -> None:
        """A variant's process ran the tree it was meant to (PYTHONPATH was not overridden)."""
        if Path(package) != (self.variants[variant] / "civic").resolve():
            raise RuntimeError(f"{variant} ran the civic at {package}, not the one in "
                               f"{self.variants[variant]}")

    # --- one dispatch run (P1, P3, P6) ------------------------------------------------------

    def beside(self, procs: list[ServerProcess]) -> contextlib.AbstractContextManager[object]:
        """What runs beside the servers of a dispatch run, from before its window to after it:
        nothing here; a browser on the dashboard in benchmarks/dashboard.py."""
        return contextlib.nullcontext()

    def dispatch(self, variant: str, replication: int, prefetch: int, duties: int, *,
                 servers_count: int = 1, dataset: bool = True) -> dict[str, float | None]:
        """Serve ``duties`` (a dataset of their own, else the queue in the tables) to the load
        generator; returns the run's figures."""
        dataset_id = self.import_duties(f"bench-r{replication}", duties) if dataset else None
        self._runs += 1
        logs = self.root / "logs" / f"run-{self._runs}-{variant}"
        snap: dict[str, object] = {"x0": self.cluster.transactions()}
        try:
            with servers(self.variants[variant], self.url, logs, servers_count,
                         web=self.web) as procs, self.beside(procs):
                pids = [s.pid for s in procs]

                def cpu() -> tuple[float, float, float]:
                    return (sum(map(cpu_seconds, pids)), self.cluster.cpu(), time.process_time())

                def start() -> None:
                    snap["s0"] = self.cluster.statements_run()
                    snap["cpu0"] = cpu()

                def stop() -> None:
                    snap["cpu1"] = cpu()
                    snap["rss"] = max(map(rss_bytes, pids))

                def quiet() -> None:
                    snap["s1"] = self.cluster.statements_run()

                load = asyncio.run(drive([s.address for s in procs], self.citizens, self.token,
                                         prefetch, duties * replication,
                                         Probe(start, stop, quiet), limit=self.sizes.limit))
            time.sleep(0.5)  # the servers' backends exit, publishing their counts
            snap["x1"] = self.cluster.transactions()
        finally:
            if dataset_id is not None:
                self.drop(dataset_id)
        self.batches[variant] = load.batches
        if load.refused:
            self.notes["P1"].append(f"{variant}: {load.refused} result(s) refused: {load.reasons}")
        settled = load.accepted / replication
        (server0, pg0, gen0), (server1, pg1, gen1) = snap["cpu0"], snap["cpu1"]  # type: ignore[misc]
        s0, s1 = snap["s0"], snap["s1"]
        per = 1000 / settled if settled else 0.0
        return {"rate": settled / load.seconds, "server_ms": (server1 - server0) * per,
                "pg_ms": (pg1 - pg0) * per, "gen_ms": (gen1 - gen0) * per,
                "xacts": (snap["x1"] - snap["x0"]) / settled if settled else None,  # type: ignore[operator]
                "statements": (s1 - s0) / settled if settled and s0 is not None else None,  # type: ignore[operator]
                "rss_mb": snap["rss"] / 2**20}  # type: ignore[operator]

    def record_dispatch(self, key: tuple[str, ...], figures: dict[str, float | None]) -> None:
        for name, value in figures.items():
            self.add((*key, name), value)
        self.log(f"{' '.join(key)}: {figures['rate']:,.0f} duties/s, server "
                 f"{figures['server_ms']:.2f} ms/duty, PostgreSQL {figures['pg_ms']:.2f} ms/duty")

    # --- phases ---------------------------------------------------------------------------

    def p1(self) -> None:
        """Server dispatch at replication 1 and 2, prefetch 1 and 32, beside the peers."""
        peers = [kind for kind in ("procrastinate", "pgqueuer") if _installed(kind)]
        if len(peers) < 2:
            self.notes["P1"].append("peers skipped: install the bench extra (pip install "
                                    "-e '.[bench]') to measure procrastinate and pgqueuer")
        for round_ in range(self.sizes.runs):
            for replication in (1, 2):
                for prefetch in (1, 32):
                    duties = (self.sizes.p1 if prefetch == 1 else self.sizes.p32) // replication
                    for variant in self.variants:
                        figures = self.dispatch(variant, replication, prefetch, duties)
                        self.record_dispatch(("P1", f"r{replication}", f"p{prefetch}", variant),
                                             figures)
            for kind in peers:
                self.add(("P1", "peer", kind), self.peer(kind))
        if self.sizes.strace and shutil.which("strace"):
            for variant in self.variants:
                for prefetch in (1, 32):
                    self.round_trips(variant, prefetch)
        else:
            self.notes["P1"].append("round trips not counted (strace missing, or --quick)")

    def peer(self, kind: str) -> float:
        url = self.cluster.create_database(f"peer_{kind}")
        jobs = self.sizes.peer_jobs // (4 if kind == "procrastinate" else 1)  # the slower one
        out = subprocess.run([sys.executable, str(HERE / "peers.py"), kind, url, str(jobs)],
                             capture_output=True, text=True,
                             timeout=600)
        if out.returncode:
            raise RuntimeError(f"{kind} failed: {out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rate = result["jobs"] / result["seconds"]
        self.log(f"P1 peer {kind}: {rate:,.0f} jobs/s")
        return rate

    def round_trips(self, variant: str, prefetch: int) -> None:
        """Count the server's socket sends and receives under strace (a run of its own:
        strace slows the server, so no rate is taken from it)."""
        duties = self.sizes.strace
        dataset_id = self.import_duties("bench-r1", duties)
        trace = self.root / f"strace-{variant}-{prefetch}.txt"
        try:
            with servers(self.variants[variant], self.url, self.root / "logs" / "strace") as procs:
                tracer = subprocess.Popen(["strace", "-f", "-qq", "-yy", "-e",
                                           "trace=sendto,recvfrom", "-o", str(trace), "-p",
                                           str(procs[0].pid)], stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # attached to every thread
                probe = Probe(start=lambda: trace.write_text(""))  # only the timed window
                asyncio.run(drive([procs[0].address], self.citizens, self.token, prefetch,
                                  duties, probe, limit=120, settle=0.5))
                tracer.send_signal(signal.SIGINT)
                tracer.wait(30)
        finally:
            self.drop(dataset_id)
        counts: dict[str, int] = defaultdict(int)
        for line in trace.read_text(errors="replace").splitlines():
            call = "send" if "sendto(" in line else "recv" if "recvfrom(" in line else None
            if call is None:
                continue
            peer = "postgres" if "<UNIX" in line else "citizens" if "<TCP" in line else "other"
            counts[f"{call}-{peer}"] += 1
        for name, count in counts.items():
            self.add(("P1", "trips", f"p{prefetch}", variant, name), count / duties)
        self.log(f"P1 round trips {variant} p{prefetch}: "
                 + ", ".join(f"{k} {v / duties:.2f}/duty" for k, v in sorted(counts.items())))

    def p1e(self) -> None:
        """End to end: 2 process citizens, a `cp` model, against a shell loop of `cp`."""
        sample = self.root / "p1e-input.json"
        sample.write_text('[{"n": "0"}]')
        for round_ in range(self.sizes.runs):
            for variant in self.variants:
                seconds = self.citizens_run(variant, "bench-r1", self.sizes.p1e,
                                            f"p1e-{round_}-{variant}", prefetch=4)
                self.add(("P1e", variant), self.sizes.p1e / seconds)
            started = time.perf_counter()
            subprocess.run(["bash", "-c", f'for i in $(seq {self.sizes.p1e}); do cp "$1" "$2"; '
                            "done", "loop", str(sample), str(self.root / "p1e-output.json")],
                           check=True)
            self.add(("P1e", "shell"), self.sizes.p1e / (time.perf_counter() - started))
            self.log("P1e: " + ", ".join(f"{v} {self.figures[('P1e', v)][-1]:,.0f}/s"
                                         for v in self.variants)
                     + f", shell loop {self.figures[('P1e', 'shell')][-1]:,.0f}/s")

    def citizens_run(self, variant: str, model: str, duties: int, prefix: str, prefetch: int,
                     count: int = 2) -> float:
        """Seconds from spawning ``count`` process citizens of the variant's tree, against its
        server, to the last of ``duties`` done."""
        dataset_id = self.import_duties(model, duties)
        logs = self.root / "logs" / prefix
        try:
            with servers(self.variants[variant], self.url, logs) as procs:
                names = [f"{prefix}-{i}" for i in range(count)]
                runner = self.in_tree(variant, ["citizens", f"127.0.0.1:{procs[0].port}",
                                                str(prefetch), str(self.root / "citizens"),
                                                str(logs), *names], logs / "citizens.log",
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                assert runner.stdin is not None and runner.stdout is not None
                try:
                    runner.stdin.write(f"{self.token}\n")
                    runner.stdin.flush()
                    ready, _, where = runner.stdout.readline().strip().partition(" ")
                    if ready != "ready":
                        raise RuntimeError(f"{prefix}: the {variant} citizens did not start: "
                                           f"{(logs / 'citizens.log').read_text()[-2000:]}")
                    self.same_tree(variant, where)
                    started = time.perf_counter()
                    runner.stdin.write("go\n")
                    runner.stdin.flush()
                    deadline = time.monotonic() + 600
                    while catalog.progress(self.url, dataset_id)["pending"]:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{prefix}: duties still pending after 600 s")
                        if runner.poll() is not None:
                            raise RuntimeError(f"{prefix}: the {variant} citizens exited "
                                               f"{runner.returncode}")
                        time.sleep(0.02)
                    return time.perf_counter() - started
                finally:
                    with contextlib.suppress(OSError):
                        runner.stdin.close()  # the runner stops its citizens
                    try:
                        runner.wait(30)
                    except subprocess.TimeoutExpired:
                        runner.kill()
                        runner.wait()
        finally:
            self.drop(dataset_id)

    def p2(self) -> None:
        """A CPU-bound compiled model on 2 citizens against multiprocessing.Pool(2)."""
        busy = self._busy_binary()
        model = self._model("bench-busy", BUSY_MODEL, {"busy": busy})
        inputs = self.root / "p2-inputs"
        inputs.mkdir(exist_ok=True)
        jobs = []
        for n in range(self.sizes.p2):
            path = inputs / f"{n}.json"
            path.write_text(json.dumps([{"n": str(n)}]))
            jobs.append((str(busy), str(path), str(inputs / f"{n}.out")))
        for round_ in range(self.sizes.runs):
            seconds = {}
            for variant in self.variants:
                seconds[variant] = self.citizens_run(variant, model, self.sizes.p2,
                                                     f"p2-{round_}-{variant}", prefetch=1)
                self.add(("P2", variant), self.sizes.p2 / seconds[variant])
            # spawn, not fork: this process has threads (psycopg's COPY writer), and a pool
            # forked from it hung once on a lock a thread held.
            started = time.perf_counter()  # from starting the workers, as for the citizens
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                pool.map(_run_binary, jobs, chunksize=1)
                pooled = time.perf_counter() - started
                pool.close()
                pool.join()
            self.add(("P2", "pool"), self.sizes.p2 / pooled)
            self.log("P2: " + ", ".join(f"{v} {t:.2f}s" for v, t in seconds.items())
                     + f", Pool(2) {pooled:.2f}s for {self.sizes.p2} duties")

    def _busy_binary(self) -> Path:
        """``busy``: about 0.1 s of CPU per run on this machine (calibrated once), then a copy."""
        source = self.root / "busy.c"
        source.write_text(BUSY_C)
        binary = self.root / "busy"
        iterations = 20_000_000
        for _ in range(2):
            subprocess.run(["cc", "-O2", f"-DITERATIONS={iterations}UL", "-o", str(binary),
                            str(source)], check=True)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                subprocess.run([str(binary), str(source), str(self.root / "busy.out")], check=True)
                times.append(time.perf_counter() - started)
            iterations = max(1, int(iterations * 0.1 / min(times)))
        self.notes["P2"].append(f"model: {min(times) * 1000:.0f} ms per run alone")
        return binary

    def p3(self) -> None:
        """Dispatch with 10^3 queued, 10^6 queued and 10^6 finished duties in the tables."""
        n = self.sizes.p32
        for round_ in range(self.sizes.runs):
            for variant in self.variants:
                self.record_dispatch(("P3", "small", variant), self.dispatch(variant, 1, 32, n))
        big = self.queue(self.sizes.big)
        self.tidy()  # the steady state of a big queue, not the aftermath of writing it
        for round_ in range(self.sizes.runs):
            for variant in self.variants:
                self.record_dispatch(("P3", "queued", variant),
                                     self.dispatch(variant, 1, 32, n, dataset=False))
        self.finish(big)
        self.tidy()
        for round_ in range(self.sizes.runs):
            for variant in self.variants:
                self.record_dispatch(("P3", "finished", variant),
                                     self.dispatch(variant, 1, 32, n))

    def queue(self, count: int) -> int:
        """A dataset of ``count`` pending one-record duties, written by SQL as the import's COPY
        writes them (or, should the duties table have changed shape, by the import itself)."""
        started = time.perf_counter()
        dataset_id = self.import_duties("bench-r1", 1)
        try:
            with self.cluster.connect() as db, db.transaction():
                db.execute(
                    "INSERT INTO duties (dataset_id, model_id, first_record, input, open_slots) "
                    "SELECT d.id, d.model_id, g, json_build_array(json_build_object('n', g::text)),"
                    " 1 FROM datasets d, generate_series(1, %(n)s - 1) g WHERE d.id = %(id)s",
                    {"id": dataset_id, "n": count})
                db.execute("UPDATE datasets SET records = %(n)s, duties = %(n)s WHERE id = %(id)s",
                           {"id": dataset_id, "n": count})
        except psycopg.Error as exc:
            self.notes["P3"].append(f"queue written by the import (SQL refused: {exc})")
            self.drop(dataset_id)
            dataset_id = self.import_duties("bench-r1", count)
        with self.cluster.connect() as db:
            db.execute("ANALYZE duties")
        self.log(f"P3: {count:,} duties queued in {time.perf_counter() - started:.1f}s")
        return dataset_id

    def finish(self, dataset_id: int) -> None:
        """Settle the dataset's pending duties by SQL: a valid replica each, spread over the
        load generator's citizens, as a project would look after that many duties."""
        started = time.perf_counter()
        with self.cluster.connect() as db, db.transaction():
            db.execute("""
                WITH c AS (SELECT row_number() OVER (ORDER BY id) - 1 AS k, id, host, volunteer_id
                           FROM citizens WHERE name LIKE 'loadgen-%%'),
                     n AS (SELECT count(*) AS n FROM c)
                INSERT INTO replicas (duty_id, citizen_id, state, leased_at, deadline, started_at,
                                      returned_at, exit_code, output, digest, host, volunteer_id)
                SELECT u.id, c.id, 'valid', now(), now(), now(), now(), 0, u.input,
                       md5(u.input::text), c.host, c.volunteer_id
                FROM duties u CROSS JOIN n JOIN c ON c.k = u.id %% n.n
                WHERE u.dataset_id = %(id)s AND u.state = 'pending'""", {"id": dataset_id})
            db.execute("""
                UPDATE duties SET state = 'done', open_slots = 0, canonical = input,
                       finished_at = now()
                WHERE dataset_id = %(id)s AND state = 'pending'""", {"id": dataset_id})
            db.execute("""
                UPDATE citizens c SET valid_count = c.valid_count + r.n
                FROM (SELECT citizen_id, count(*) AS n FROM replicas r JOIN duties u
                      ON u.id = r.duty_id WHERE u.dataset_id = %(id)s GROUP BY citizen_id) r
                WHERE c.id = r.citizen_id""", {"id": dataset_id})
        self.log(f"P3: finished by SQL in {time.perf_counter() - started:.1f}s")

    def p4(self) -> None:
        """Import at 1 and 100 records per duty against a raw COPY of the same rows."""
        count = self.sizes.p4
        path = self.records(count)
        for round_ in range(self.sizes.runs):
            for per_duty in (1, 100):
                key = ("P4", f"{per_duty}")
                for variant in self.variants:
                    self.add((*key, variant), count / self.import_in(variant, path, per_duty))
                self.add((*key, "copy"), count / self.raw_copy(count, per_duty))
                self.log(f"P4 {per_duty}/duty: import "
                         + ", ".join(f"{v} {self.figures[(*key, v)][-1]:,.0f}"
                                     for v in self.variants)
                         + f" records/s, COPY {self.figures[(*key, 'copy')][-1]:,.0f}")

    def import_in(self, variant: str, path: Path, per_duty: int) -> float:
        """Seconds the variant's ``catalog.import_dataset`` takes, in a process of its own
        (timed there, around the call); the dataset is dropped afterwards."""
        runner = self.in_tree(variant, ["import", self.url, "bench-r1", str(path), str(per_duty)],
                              self.root / "logs" / "p4.log", stdout=subprocess.PIPE)
        out, _ = runner.communicate(timeout=600)
        if runner.returncode:
            raise RuntimeError(f"{variant} import exited {runner.returncode}: "
                               f"{(self.root / 'logs' / 'p4.log').read_text()[-2000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        self.drop(result["id"])
        self.same_tree(variant, result["civic"])
        return float(result["seconds"])

    def raw_copy(self, count: int, per_duty: int) -> float:
        """Seconds to COPY the rows an import of ``count`` records would write (prepared in
        memory beforehand, not timed) into the same duties table, in one transaction."""
        dataset_id = self.import_duties("bench-r1", 1)
        with self.cluster.connect() as db:
            model_id = db.execute("SELECT model_id FROM datasets WHERE id = %s",
                                  (dataset_id,)).fetchone()[0]
        rows = [(dataset_id, model_id, first,
                 json.dumps([{"n": str(n)} for n in range(first, min(count, first + per_duty))]),
                 1) for first in range(0, count, per_duty)]
        try:
            with self.cluster.connect(autocommit=False) as db:
                started = time.perf_counter()
                with db.cursor().copy("COPY duties (dataset_id, model_id, first_record, input, "
                                      "open_slots) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                db.commit()
                return time.perf_counter() - started
        finally:
            self.drop(dataset_id)

    def p6(self) -> None:
        """Dispatch at prefetch 32 with 1, 2 and 3 servers on one database, each variant's.
        Every server listens on a port of its own (the baseline has no --reuse-port) and the
        simulated citizens are spread round-robin over them."""
        for round_ in range(self.sizes.runs):
            for count in (1, 2, 3):
                for variant in self.variants:
                    try:
                        figures = self.dispatch(variant, 1, 32, self.sizes.p32,
                                                servers_count=count)
                    except (LoadError, RuntimeError) as exc:  # the other runs still count
                        self.notes["P6"].append(f"{count} server(s) {variant}, round "
                                                f"{round_ + 1}: {exc}"[:500])
                        self.log(f"P6 {count} {variant} FAILED: {exc!r}")
                        continue
                    self.record_dispatch(("P6", f"{count}", variant), figures)


def _installed(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _run_binary(job: tuple[str, str, str]) -> None:
    subprocess.run(list(job), check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, small sizes (CI smoke test)")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier CIVIC to compare")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, --quick 1)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    if args.baseline is not None and not (args.baseline / "src" / "civic").is_dir():
        parser.error(f"--baseline {args.baseline}: no src/civic there")
    started = time.time()
    # SIGTERM unwinds like Ctrl-C: servers, citizens and the embedded PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="civic-bench-") as tmp:
        bench = Bench(Path(tmp), sizes, args.baseline)
        try:
            # P3 last: it leaves a million finished duties in the tables.
            for phase in ("P4", "P1", "P1e", "P2", "P6", "P3"):
                if phase in args.phases:
                    bench.log(f"{phase} ...")
                    bench.tidy()
                    try:
                        getattr(bench, phase.lower())()
                    except Exception as exc:  # the other phases still run and are reported
                        bench.notes["errors"].append(f"{phase} failed: {exc!r}"[:2000])
                        bench.log(f"{phase} FAILED: {exc!r}")
        finally:
            bench.cluster.stop()
        text = write(bench, args, sizes, time.time() - started)
    args.output.write_text(text)
    print(text)
    sys.exit(1 if bench.notes.get("errors") else 0)


if __name__ == "__main__":
    main()
