"""The scheduler: what every session asks of the database, run in batches.

Sessions hand over lease requests, results and heartbeats and go on reading their citizen's
frames. The scheduler takes whatever queued while its previous batch ran and runs it as one
transaction: results first (a fixed handful of set-based statements, whatever their number),
then replica starts and sightings, then one lease statement per request, pipelined into one
round trip. Batches grow with the load by themselves; nothing waits on a timer. Answers go out
only after the commit, so an acknowledged result is never lost.

A request that finds no work may be parked (citizens that speak the ``batches`` feature): it
is tried again when this server frees work, when another process announces some on the
``civic_work`` channel (an import, released replicas), or after ``park`` seconds, whichever
comes first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from civic.protocol import Assignment, Result
from civic.server import assimilate
from civic.server.stats import Stats
from civic.store import audit, work

log = logging.getLogger("civic.server")

MAX_RESULTS = 1024  # per batch: keeps each transaction's row locks short
MAX_REQUESTS = 256
RETRIES = 3  # a batch that deadlocked with another server's is run again
DEBOUNCE = 0.02  # seconds: wake-ups that come together try the parked requests once
SUMMARY_EVERY = 60.0


@dataclass(frozen=True)
class Policy:
    """What leasing and judging follow (from the server's options)."""

    window: float = 60.0
    cap: int = 32
    pause: float = 15.0
    margin: float = 30.0
    cooldown: float = 300.0
    park: float = 10.0
    datasets: tuple[int, ...] | None = None


@dataclass(eq=False)
class _Request:
    citizen_id: str
    count: int
    parks: bool
    future: asyncio.Future[list[Assignment]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    until: float = 0.0  # when a parked request is tried a last time and answered


@dataclass
class _Batch:
    results: list[tuple[str, Result, asyncio.Future[tuple[bool, str]]]]
    requests: list[_Request]
    started: dict[str, int]
    sighted: set[str]


class Scheduler:
    """Batches the database work of every session of one server."""

    def __init__(self, pool: AsyncConnectionPool, url: str, policy: Policy) -> None:
        self.pool, self.url, self.policy = pool, url, policy
        self._results: list[tuple[str, Result, asyncio.Future[tuple[bool, str]]]] = []
        self._requests: list[_Request] = []
        self._parked: list[_Request] = []
        self._started: dict[str, int] = {}
        self._sighted: set[str] = set()
        self._ready = asyncio.Event()
        self._waking: asyncio.TimerHandle | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.totals: collections.Counter[str] = collections.Counter()  # since it started
        self.stats = Stats()  # for /metrics
        self.server_id: str | None = None  # leasing stops while this server is drained
        self.leasing = True  # False while drained: requests get nothing (and park)
        self.on_control: Callable[[], None] | None = None  # told of NOTIFY civic_control

    # --- what sessions call -------------------------------------------------------------

    def submit(self, citizen_id: str, results: Sequence[Result]
               ) -> list[asyncio.Future[tuple[bool, str]]]:
        """Queue results; each future gives (accepted, what happened) once committed."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in results]
        self._results += [(citizen_id, r, f) for r, f in zip(results, futures)]
        self._ready.set()
        return futures

    def lease(self, citizen_id: str, count: int, parks: bool) -> asyncio.Future[list[Assignment]]:
        """Queue a lease request; the future gives the replicas leased (empty: none, after
        parking for up to ``park`` seconds when ``parks``)."""
        request = _Request(citizen_id, count, parks)
        self._requests.append(request)
        self._ready.set()
        return request.future

    def withdraw(self, future: asyncio.Future[list[Assignment]]) -> None:
        """The request of this future is not to be leased for any more (its connection ended):
        if it waits, parked or queued, it is answered with nothing now; one in the batch running
        may still lease, and its session gives that back."""
        for request in self._parked + self._requests:
            if request.future is future:
                request.count = 0
                _resolve(future, [])
        self._parked = [r for r in self._parked if r.count]

    def beat(self, citizen_id: str, running: int | None) -> None:
        """A heartbeat: the citizen is alive, and has started ``running`` (its deadline moves
        to the model's timeout from now)."""
        self._sighted.add(citizen_id)
        if running is not None:
            self._started[citizen_id] = running
        self._ready.set()

    def wake(self) -> None:
        """Work may have appeared: try the parked requests again (debounced)."""
        if self._parked and self._waking is None:
            self._waking = asyncio.get_running_loop().call_later(DEBOUNCE, self._unpark)

    def release_parked(self) -> None:
        """Answer every parked request now, with nothing (the server is stopping)."""
        for request in self._parked:
            _resolve(request.future, [])
        self._parked.clear()

    # --- the batch loop -----------------------------------------------------------------

    def _unpark(self, expired_only: bool = False) -> None:
        if not expired_only:
            self._waking = None
        now = asyncio.get_running_loop().time()
        again = [r for r in self._parked if not expired_only or r.until <= now]
        for request in again:
            request.parks = request.parks and request.until > now  # the last try answers
        retried = set(map(id, again))
        self._parked = [r for r in self._parked if id(r) not in retried]
        self._requests += again
        if again:
            self._ready.set()

    async def run(self) -> None:
        """Run batches until cancelled."""
        loop = asyncio.get_running_loop()
        summary = loop.time() + SUMMARY_EVERY
        while True:
            timeout = min([r.until for r in self._parked], default=summary) - loop.time()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(0.0, timeout))
            if any(r.until <= loop.time() for r in self._parked):
                self._unpark(expired_only=True)
            if loop.time() >= summary:
                self._summarise()
                summary = loop.time() + SUMMARY_EVERY
            self._ready.clear()
            batch = self._take()
            if batch.results or batch.requests or batch.started or batch.sighted:
                await self._run(batch)

    def _take(self) -> _Batch:
        results, self._results = self._results[:MAX_RESULTS], self._results[MAX_RESULTS:]
        requests, self._requests = self._requests[:MAX_REQUESTS], self._requests[MAX_REQUESTS:]
        requests = [r for r in requests if r.count]  # withdrawn ones were answered already
        if self._results or self._requests:
            self._ready.set()  # more than one batch's worth: go on at once
        batch = _Batch(results, requests, self._started, self._sighted)
        self._started, self._sighted = {}, set()
        return batch

    async def _run(self, batch: _Batch) -> None:
        """Run a batch and answer its futures; a result PostgreSQL cannot store is refused
        alone, without failing the others."""
        try:
            outcome, leases = await self._transaction(batch)
        except psycopg.DataError as exc:
            if len(batch.results) <= 1:
                for _, _, future in batch.results:
                    _resolve(future, (False, f"result cannot be stored: {exc}"))
                if batch.requests or batch.started:
                    await self._run(_Batch([], batch.requests, batch.started, batch.sighted))
                return
            for one in batch.results:  # find the one: each alone
                await self._run(_Batch([one], [], {}, set()))
            await self._run(_Batch([], batch.requests, batch.started, batch.sighted))
            return
        except Exception as exc:  # the database is away: every session says so to its citizen
            for future in [f for _, _, f in batch.results] + [r.future for r in batch.requests]:
                if not future.done():  # (its session may be gone)
                    future.set_exception(exc)
            return
        self._answer(batch, outcome, leases)

    async def _transaction(self, batch: _Batch
                           ) -> tuple[assimilate.Outcome, list[list[Assignment]]]:
        policy = self.policy
        leasing = self.leasing
        if not (leasing or batch.results or batch.started or batch.sighted):
            return assimilate.Outcome(), [[] for _ in batch.requests]  # drained: no round trip
        for attempt in range(1, RETRIES + 1):
            try:
                async with self.pool.connection() as db, db.pipeline(), db.transaction():
                    # Timed per batch for /metrics: the result statements (submit_many waits
                    # for the answers it needs), and the lease statements (lease_many's own
                    # pipeline syncs when it returns).
                    began = time.perf_counter()
                    outcome = assimilate.Outcome()
                    if batch.results:
                        outcome = await assimilate.submit_many(
                            db, [(c, r) for c, r, _ in batch.results], policy.cooldown)
                        if outcome.reopened:
                            await work.announce_work(db)  # for the other servers' parked ones
                    stored = time.perf_counter()
                    if batch.started:
                        await work.start(db, batch.started, policy.margin)
                    if batch.sighted:
                        await work.sighted(db, batch.sighted)
                    asked = time.perf_counter()
                    leases = await work.lease_many(
                        db, [(r.citizen_id, r.count) for r in batch.requests],
                        window=policy.window, cap=policy.cap, pause=policy.pause,
                        datasets=policy.datasets, server_id=self.server_id,
                    ) if batch.requests and leasing else [[] for _ in batch.requests]
                    leased = time.perf_counter()
                if batch.results:  # committed: only now do they count
                    self.stats.results.observe(stored - began)
                    self.stats.replicas.update(outcome.replicas)
                if batch.requests and leasing:
                    self.stats.leases.observe(leased - asked)
                return outcome, leases
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == RETRIES:
                    raise
                log.debug("batch deadlocked with another server's; running it again")
        raise AssertionError("unreachable")

    def _answer(self, batch: _Batch, outcome: assimilate.Outcome,
                leases: list[list[Assignment]]) -> None:
        for (_, result, future), answer in zip(batch.results, outcome.answers):
            log.debug("result for replica %d: %s", result.replica_id, answer[1])
            _resolve(future, answer)
        for name in outcome.rested:
            log.info("citizen %s rests %.0fs (keeps failing or disagreeing)", name,
                     self.policy.cooldown)
        loop = asyncio.get_running_loop()
        for request, assignments in zip(batch.requests, leases):
            if assignments or not request.parks:
                _resolve(request.future, assignments)
            elif not request.future.done():
                request.until = request.until or loop.time() + self.policy.park
                self._parked.append(request)
        self.counts.update(batches=1, results=len(batch.results), settled=outcome.settled,
                           leased=sum(map(len, leases)))
        self.totals.update(results=len(batch.results), leased=sum(map(len, leases)))
        if outcome.reopened:
            self.wake()

    def _summarise(self) -> None:
        counts, self.counts = self.counts, collections.Counter()
        if counts["results"] or counts["leased"]:  # an idle server says nothing
            log.info("last %.0fs: %d result(s), %d duty(ies) done, %d replica(s) leased, "
                     "in %d batch(es); %d request(s) parked", SUMMARY_EVERY, counts["results"],
                     counts["settled"], counts["leased"], counts["batches"], len(self._parked))

    async def listen(self) -> None:
        """Wake parked requests when another process announces work (NOTIFY civic_work), and
        tell ``on_control`` of control operations (NOTIFY civic_control). Polling (at ``park``
        seconds, and the server's beat) is the safety net while this connection is down."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url,
                                                                 autocommit=True) as conn:
                    await conn.execute("LISTEN civic_work")
                    await conn.execute(f"LISTEN {audit.CONTROL}")
                    async for notify in conn.notifies():
                        if notify.channel == audit.CONTROL:
                            if self.on_control is not None:
                                self.on_control()
                        else:
                            self.wake()
            except psycopg.Error as exc:
                log.debug("listening for work announcements: %s; again in 5s", exc)
            await asyncio.sleep(5)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    """Answer a session's future, unless its session gave up waiting (a cancelled task)."""
    if not future.done():
        future.set_result(value)
