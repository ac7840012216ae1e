"""The peers: no-op jobs through procrastinate and pgqueuer on the benchmark's PostgreSQL.

Run by run.py in a subprocess (so each peer has a process of its own, as CIVIC's server has):
``python benchmarks/peers.py procrastinate|pgqueuer URL JOBS``. It installs the peer's schema
if missing, empties its job table, enqueues JOBS jobs (not timed), then times one worker from
its start until every job is done, and prints one JSON line: jobs, seconds, worker CPU seconds.
Settings (the peers' defaults where they suit a throughput test): procrastinate one worker with
concurrency 10 and listen/notify; pgqueuer one QueueManager (asyncpg) with batch size 10 in
drain mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

PROCRASTINATE_CONCURRENCY = 10
PGQUEUER_BATCH = 10


async def procrastinate_jobs(url: str, jobs: int) -> tuple[float, float]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        return None

    async with app.open_async():
        connector = app.connector
        installed = await connector.execute_query_one_async(
            "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS installed")
        if not installed["installed"]:
            await app.schema_manager.apply_schema_async()
        await connector.execute_query_async("TRUNCATE procrastinate_jobs CASCADE")
        for start in range(0, jobs, 1000):
            await noop.batch_defer_async(*({} for _ in range(start, min(jobs, start + 1000))))
        started, cpu = time.perf_counter(), time.process_time()
        await app.run_worker_async(queues=["bench"], wait=False,
                                   concurrency=PROCRASTINATE_CONCURRENCY,
                                   install_signal_handlers=False)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        left = await connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status <> 'succeeded'")
        if left["n"]:
            raise RuntimeError(f"procrastinate left {left['n']} jobs unfinished")
    return elapsed, cpu


async def pgqueuer_jobs(url: str, jobs: int) -> tuple[float, float]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
        for start in range(0, jobs, 1000):
            n = min(jobs, start + 1000) - start
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        manager = QueueManager(queries)
        done = 0

        @manager.entrypoint("noop")
        async def noop(job: object) -> None:
            nonlocal done
            done += 1

        started, cpu = time.perf_counter(), time.process_time()
        await manager.run(batch_size=PGQUEUER_BATCH, mode=QueueExecutionMode.drain)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if done != jobs:
            raise RuntimeError(f"pgqueuer ran {done} of {jobs} jobs")
    finally:
        await conn.close()
    return elapsed, cpu


def main() -> None:
    kind, url, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.basicConfig(level=logging.WARNING)
    run = {"procrastinate": procrastinate_jobs, "pgqueuer": pgqueuer_jobs}[kind]
    seconds, cpu = asyncio.run(run(url, jobs))
    print(json.dumps({"jobs": jobs, "seconds": seconds, "cpu": cpu}))


if __name__ == "__main__":
    main()
