"""The asyncio TCP service: one connection per citizen, one handler per message type.

The server keeps nothing that cannot be rebuilt from PostgreSQL: per connection only the ids of
the replicas leased on it, so that they are released at once when the citizen vanishes. Nobody
is charged for what is not a citizen's doing: a graceful server stop and a database error keep
its leases (it reports what it still holds when it reconnects), a bye frees them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import errno
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from civic import __version__
from civic import protocol as p
from civic.errors import (AddressInUse, Incompatible, ProtocolError, Refused, StoreError,
                          UsageError)
from civic.server.assimilate import text
from civic.server.events import EventLog
from civic.server.scheduler import Policy, Scheduler
from civic.store import redact, servers, work

log = logging.getLogger("civic.server")

HELLO_MAX_FRAME = 64 * 1024
HELD_MAX = 1024  # replica ids a hello may claim to hold
RESULTS_MAX = 256  # results in one frame
IN_FLIGHT = 8  # result frames of one connection waiting for the database: then stop reading
TRIM_EVERY = 60.0  # seconds between trims of old events (by the elected reaper)


@dataclass(frozen=True)
class ServerOptions:
    """Tunables; the defaults suit a lab server."""

    host: str = "0.0.0.0"
    port: int = p.DEFAULT_PORT
    grace: float = 30.0  # seconds to wait for results in flight when stopping
    lease_margin: float = 30.0  # seconds added to a model's timeout once a replica started
    start_window: float = 60.0  # seconds a leased replica may wait to be started
    retry_pause: float = 15.0  # seconds before a citizen may lease again a duty it failed
    reap_interval: float = 5.0  # seconds between sweeps for overdue replicas
    heartbeat: float = 15.0  # citizens send a heartbeat this often
    handshake_timeout: float = 10.0
    no_work_retry: float = 2.0  # what a citizen that cannot park is told to wait
    park: float = 10.0  # seconds a request with no work waits on the server for some
    max_frame: int = p.MAX_FRAME
    max_prefetch: int = 32
    pool_size: int = 10
    max_connections: int = 2048  # in total; more are closed at once
    max_handshakes: int = 16  # connections per address that have not said hello yet
    cooldown: float = 300.0  # seconds a citizen that keeps failing or disagreeing rests
    tls_cert: str | None = None
    tls_key: str | None = None
    datasets: tuple[int, ...] | None = None  # lease only these datasets' duties (None: all)
    reuse_port: bool = False  # SO_REUSEPORT: several servers of one host share the port
    beat: float = 2.0  # seconds between refreshes of this server's row and control checks
    events: bool = True  # keep this process's log lines (INFO and above) in the database


@dataclass(eq=False)  # hashed by identity: kept in a set
class Connection:
    """One citizen's connection and the replicas leased on it."""

    writer: asyncio.StreamWriter
    address: str
    peer: str
    citizen_id: str = ""
    greeted: bool = False  # said hello and was welcomed
    name: str = "?"
    leased: set[int] = field(default_factory=set)
    said_bye: bool = False
    keep_leases: bool = False  # gone through no fault of its own: its leases stay
    refused: bool = False  # blocked, or its volunteer blocked or removed
    why: str = ""  # what it was told when refused
    batches: bool = False  # speaks the "batches" feature: results frames, parked requests
    asking: asyncio.Future[list[p.Assignment]] | None = None  # the duty request being answered
    storing: set[asyncio.Task[None]] = field(default_factory=set)  # results being stored
    gone: bool = False
    hello: int = 0  # the citizen's hello count at this connection's hello

    # Frames from concurrent tasks (duties, acks, a bundle's header and payload) never mix:
    # each frame is written whole, and a bundle's payload follows its header under this lock.
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: p.Message) -> None:
        await self.write(p.encode(message))

    async def write(self, frame: bytes) -> None:
        async with self.sending:
            self.writer.write(frame)
            await self.writer.drain()


def _fit(assignments: list[p.Assignment], max_frame: int
         ) -> tuple[bytes | None, list[p.Assignment]]:
    """The duty frame for as many of ``assignments`` as fit in ``max_frame``, and the rest."""
    for keep in range(len(assignments), 0, -1):
        try:
            return p.encode(p.Duty(assignments[:keep]), max_frame), assignments[keep:]
        except ProtocolError:
            continue  # rare (inputs are at most MAX_INPUT): fewer at a time
    return None, assignments


class Server:
    """Authenticates citizens, leases duties, stores results. Stateless over PostgreSQL."""

    def __init__(self, database_url: str, options: ServerOptions | None = None) -> None:
        self.url = database_url
        self.options = options or ServerOptions()
        # timeout: a request waits at most this long for a connection while PostgreSQL is away,
        # then the citizen is told "unavailable" and retries with its own backoff.
        # No connection check on checkout (a round trip each): a broken connection fails its
        # statement, the pool discards it, and the citizen is told the database is unavailable.
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=self.options.pool_size,
                                        open=False, timeout=10)
        opts = self.options
        self.scheduler = Scheduler(self.pool, database_url, Policy(
            window=opts.start_window, cap=opts.max_prefetch, pause=opts.retry_pause,
            margin=opts.lease_margin, cooldown=opts.cooldown, park=opts.park,
            datasets=opts.datasets))
        self.id = str(uuid.uuid4())  # this run's row in the servers table
        self.scheduler.server_id = self.id
        self.scheduler.on_control = self.control_changed
        self.drained = False  # asked by the operator (civic server drain): lease nothing more
        self._control = asyncio.Event()
        self.events = EventLog() if self.options.events else None
        self._writer: asyncio.Future[None] | None = None
        self.connections: set[Connection] = set()
        self._handshaking: collections.Counter[str] = collections.Counter()
        self.draining = asyncio.Event()  # stopping (a signal, stop()): not the operator's drain
        self.address: tuple[str, int] | None = None
        self._listener: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: dict[type, Callable[[Connection, Any], Awaitable[bool]]] = {
            p.RequestDuty: self._on_request_duty,
            p.FetchBundle: self._on_fetch_bundle,
            p.Result: self._on_result,
            p.Results: self._on_results,
            p.Heartbeat: self._on_heartbeat,
            p.Bye: self._on_bye,
        }

    async def start(self) -> tuple[str, int]:
        """Connect to PostgreSQL and listen; returns the address actually bound."""
        tls = self._tls()  # a bad certificate fails before anything is opened
        try:
            await self.pool.open(wait=True, timeout=15)
            async with self.pool.connection() as db:
                await work.ensure_join_token(db)  # the first start creates it
        except (PoolTimeout, psycopg.Error) as exc:
            await self.pool.close()
            raise StoreError(f"cannot reach PostgreSQL at {redact(self.url)}: {exc}") from exc
        try:
            self._listener = await asyncio.start_server(
                self._serve, self.options.host, self.options.port, reuse_address=True,
                reuse_port=self.options.reuse_port or None, limit=64 * 1024, ssl=tls,
                ssl_handshake_timeout=self.options.handshake_timeout if tls else None)
        except OSError as exc:
            await self.pool.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(f"port {self.options.port} on {self.options.host} is already "
                                   "in use; stop what holds it or choose another with --port") from None
            raise
        self.address = self._listener.sockets[0].getsockname()[:2]
        try:
            async with self.pool.connection() as db:
                drained = await servers.register(
                    db, self.id, "%s:%s" % self.address, socket.gethostname(), os.getpid(),
                    __version__)
        except (PoolTimeout, psycopg.Error) as exc:
            self._listener.close()
            await self.pool.close()
            raise StoreError(f"cannot register this server in PostgreSQL at "
                             f"{redact(self.url)}: {exc}") from exc
        if self.events is not None:
            logging.getLogger("civic").addHandler(self.events)
            self._writer = asyncio.ensure_future(self.events.write(self.pool, self.id))
        self._spawn(self._reaper())
        self._spawn(self.scheduler.run())
        self._spawn(self.scheduler.listen())
        self._spawn(self._controller())
        log.info("listening on %s:%s (server %s)", *self.address, self.id[:8])
        if drained:
            self._set_drained(True)
        return self.address

    def _tls(self) -> ssl.SSLContext | None:
        """The server's TLS context, when a certificate and key were given."""
        if not self.options.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the TLS certificate {self.options.tls_cert} / key "
                             f"{self.options.tls_key}: {exc}") from None
        return context

    async def run(self) -> None:
        """Serve until ``request_stop``; then drain and stop."""
        await self.draining.wait()
        await self.stop()

    def request_stop(self) -> None:
        self.draining.set()

    async def stop(self) -> None:
        """Stop leasing, wait up to ``grace`` seconds for results in flight, then close."""
        self.draining.set()
        if self._listener is not None:
            self._listener.close()
        self.scheduler.release_parked()  # their citizens hear bye
        in_flight = sum(len(c.leased) for c in self.connections)
        if in_flight:
            log.info("stopping: waiting up to %.0fs for %d result(s) in flight",
                     self.options.grace, in_flight)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.grace
        while any(c.leased for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.send(p.Bye("server stopping"))
            conn.writer.close()
        while self.connections and loop.time() < deadline + 5:
            await asyncio.sleep(0.05)  # let each connection release what it still holds
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        totals = self.scheduler.totals
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            async with self.pool.connection(timeout=5) as db:
                await servers.stopped(db, self.id, totals["leased"], totals["results"])
        log.info("stopped")
        if self.events is not None:
            logging.getLogger("civic").removeHandler(self.events)
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            await self.events.write_now(self.pool, self.id)
        await self.pool.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal task failed", exc_info=task.exception())

    async def _reaper(self) -> None:
        """Release replicas whose deadline passed, so their duties are leased again, and trim
        old events. Of several servers on one database, the one that holds the reaper lock at
        each sweep does it."""
        loop = asyncio.get_running_loop()
        trim = loop.time()
        while True:
            await asyncio.sleep(self.options.reap_interval)
            try:
                async with self.pool.connection() as db:
                    lost = await work.reap(db, error="deadline passed without a result",
                                           counts=self.scheduler.stats.replicas)
                    if loop.time() >= trim:
                        trim = loop.time() + TRIM_EVERY
                        await servers.trim(db)
                if lost:
                    log.warning("%d replica(s) passed their deadline; re-issuing", lost)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("reaper: database unavailable: %s", exc)

    def control_changed(self) -> None:
        """An operator changed something (NOTIFY civic_control): check now, not at the next
        beat."""
        self._control.set()

    async def _controller(self) -> None:
        """Every ``beat`` seconds, or at once when told of a control operation: refresh this
        server's row (alive, its load), follow its drain, and drop the citizens refused now
        (blocked, or their volunteer blocked or removed), telling each why."""
        away = False
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._control.wait(), self.options.beat)
            self._control.clear()
            greeted = {c.citizen_id: c for c in self.connections if c.greeted and not c.refused}
            totals = self.scheduler.totals
            try:
                async with self.pool.connection() as db:
                    drained = await servers.beat(db, self.id, len(greeted), totals["leased"],
                                                 totals["results"])
                    if drained is None:  # its row was trimmed while the database was away
                        drained = await servers.register(
                            db, self.id, "%s:%s" % self.address, socket.gethostname(),
                            os.getpid(), __version__)
                    refused = await work.refused(db, list(greeted))
            except (psycopg.Error, PoolTimeout) as exc:
                if not away:
                    log.warning("control: database unavailable: %s", exc)
                away = True
                continue
            away = False
            self._set_drained(drained)
            await asyncio.gather(*(self._drop(greeted[c], why) for c, why in refused.items()))

    def _set_drained(self, drained: bool) -> None:
        if drained == self.drained:
            return
        self.drained = drained
        self.scheduler.leasing = not drained
        if drained:
            self.scheduler.release_parked()  # answered with nothing: they park again, unleased
            in_flight = sum(len(c.leased) for c in self.connections)
            log.info("draining: leasing nothing more; %d replica(s) in flight finish", in_flight)
        else:
            self.scheduler.wake()
            log.info("undrained: leasing again")

    async def _drop(self, conn: Connection, why: str) -> None:
        """Close the connection of a citizen refused now, telling it why."""
        log.warning("%s (%s): dropped: %s", conn.name, conn.citizen_id[:8], why)
        conn.refused, conn.why = True, why
        if conn.asking is not None:
            self.scheduler.withdraw(conn.asking)
        with contextlib.suppress(Exception):  # a peer that reads nothing must not stall this
            await asyncio.wait_for(conn.send(p.Error("refused", why)), 1.0)
        conn.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address, port = writer.get_extra_info("peername")[:2]
        peer = f"{address}:{port}"
        if (len(self.connections) >= self.options.max_connections
                or self._handshaking[address] >= self.options.max_handshakes):
            log.debug("%s: too many connections; closed at once", peer)
            writer.close()  # costs nothing more: no buffer, no task beyond this one
            return
        conn = Connection(writer, address, peer)
        self.connections.add(conn)
        log.debug("connection from %s", peer)
        self._handshaking[address] += 1
        try:
            await self._session(conn, reader)
        except p.ConnectionClosed:
            pass
        except (ProtocolError, Refused) as exc:
            log.warning("%s: %s", peer, exc)
            code = ("version" if isinstance(exc, Incompatible) else
                    "refused" if isinstance(exc, Refused) else "protocol")
            with contextlib.suppress(Exception):
                await conn.send(p.Error(code, str(exc)))
        except (TimeoutError, asyncio.TimeoutError):
            log.info("%s: timed out", peer)
            with contextlib.suppress(Exception):
                await conn.send(p.Error("timeout", "no message within the timeout"))
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection lost: %s", peer, exc)
        except (psycopg.Error, PoolTimeout) as exc:
            log.error("%s: database unavailable: %s", peer, exc)
            conn.keep_leases = True  # not the citizen's doing: it comes back with what it holds
            with contextlib.suppress(Exception):
                await conn.send(p.Error("unavailable", "the server's database is unavailable"))
        except Exception:
            log.exception("%s: unexpected error", peer)
            with contextlib.suppress(Exception):
                await conn.send(p.Error("internal", "internal server error"))
        finally:
            if not conn.greeted:
                self._handshook(address)
            conn.gone = True
            if conn.asking is not None:  # a parked request must not lease for it any more
                self.scheduler.withdraw(conn.asking)
            writer.close()
            await self._forget(conn)
            self.connections.discard(conn)  # only now: stop() waits for the release above
            log.info("%s (%s) disconnected", conn.name, peer)

    def _handshook(self, address: str) -> None:
        """One connection from ``address`` is past its hello (or gone)."""
        self._handshaking[address] -= 1
        if self._handshaking[address] <= 0:
            del self._handshaking[address]  # many peers over time must not grow the table

    async def _session(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        opts = self.options
        # A hello is a few hundred bytes: strangers never get to send a big frame.
        hello = await asyncio.wait_for(p.read_message(reader, HELLO_MAX_FRAME),
                                       opts.handshake_timeout)
        if not isinstance(hello, p.Hello):
            raise ProtocolError(f"expected hello, got {hello.type}")
        if hello.version not in p.SUPPORTED_VERSIONS:
            speaks = ", ".join(map(str, p.SUPPORTED_VERSIONS))
            raise Incompatible(f"this server speaks protocol version {speaks} and the citizen "
                               f"speaks {hello.version}: install the same CIVIC release on both "
                               "(citizen images: civic image build)")
        held = hello.held[:HELD_MAX]
        async with self.pool.connection() as db:
            conn.citizen_id, secret = await work.register(
                db, citizen_id=hello.citizen_id, secret=hello.secret, name=text(hello.name, 100),
                platform=text(hello.platform, 100), address=conn.peer, token=hello.token,
                host=text(hello.host, 100), memory=max(0, hello.memory), builds=hello.builds)
            # Leases of an earlier connection that the citizen no longer holds were lost with
            # it (a server that died between leasing and sending, a dropped link): free them now
            # rather than at their deadline, charging no one. What it still computes, or has
            # results for (sent again right after the welcome), stays its own.
            await work.release(db, citizen_id=conn.citizen_id, keep=held, failure=False,
                               error="lost with an earlier connection",
                               counts=self.scheduler.stats.replicas)
            # Older connections of this citizen, on any server, release nothing when they end.
            conn.hello = await work.greeted(db, conn.citizen_id)
        conn.leased.update(held)
        conn.name = text(hello.name, 100)
        conn.batches = p.BATCHES in hello.features
        conn.greeted = True  # no longer counted against the handshake cap
        self._handshook(conn.address)
        log.info("citizen %s (%s) %s from %s", conn.name, conn.citizen_id[:8],
                 "joined" if secret else "connected", conn.peer)
        await conn.send(p.Welcome(p.PROTOCOL_VERSION, conn.citizen_id, secret, opts.heartbeat,
                                  features=[p.BATCHES]))
        idle = opts.heartbeat * 4
        while True:
            message = await asyncio.wait_for(p.read_message(reader, opts.max_frame), idle)
            handler = self._handlers.get(type(message))
            if handler is None:
                raise ProtocolError(f"unexpected {message.type} message from a citizen")
            if not await handler(conn, message):
                return

    async def _forget(self, conn: Connection) -> None:
        """Release what a departed citizen still held, so other citizens get it — unless it
        left through no fault of its own (graceful stop, database error): then its leases stay
        until it comes back holding them, or their deadlines pass."""
        if not conn.citizen_id:
            return
        await asyncio.gather(*conn.storing, return_exceptions=True)  # results come first
        try:
            async with self.pool.connection() as db:
                if conn.leased and not (conn.keep_leases or self.draining.is_set()):
                    blameless = conn.said_bye or conn.refused
                    # A replica it never started (one leased ahead) costs its duty nothing.
                    lost = await work.release(
                        db, ids=sorted(conn.leased), citizen_id=conn.citizen_id,
                        hello=conn.hello, failure=not blameless, unstarted=False,
                        counts=self.scheduler.stats.replicas,
                        error=("citizen stopped" if conn.said_bye else conn.why
                               if conn.refused else "citizen disconnected"))
                    if lost:
                        log.warning("%s left with %d replica(s) unfinished; re-issuing",
                                    conn.name, lost)
                await work.left(db, conn.citizen_id, conn.hello)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("%s: could not release its replicas (deadlines will): %s", conn.name, exc)

    async def _on_request_duty(self, conn: Connection, message: p.RequestDuty) -> bool:
        if self.draining.is_set():
            await conn.send(p.Bye("server stopping"))
            return False
        if conn.asking is None:  # one request at a time: a repeated one is answered by the first
            conn.asking = self.scheduler.lease(conn.citizen_id, max(1, min(
                message.count, self.options.max_prefetch)), parks=conn.batches)
            self._spawn(self._answer(conn, conn.asking))
        return True

    async def _answer(self, conn: Connection, request: asyncio.Future[list[p.Assignment]]
                      ) -> None:
        """Send the duties the scheduler leased for a request, while the session reads on."""
        try:
            assignments = await request
        except Exception as exc:
            return await self._failed(conn, exc)
        finally:
            conn.asking = None
        if conn.gone:  # leased after it left: nobody will compute them
            if assignments:
                async with self.pool.connection() as db:
                    await work.release(db, ids=[a.replica_id for a in assignments],
                                       failure=False, error="citizen left before receiving it",
                                       counts=self.scheduler.stats.replicas)
            return
        frame, spilled = _fit(assignments, self.options.max_frame)
        if spilled:
            await self._spill(conn, spilled, sent=len(assignments) - len(spilled))
        with contextlib.suppress(ConnectionError, OSError):
            if frame is None:
                if self.draining.is_set():
                    await conn.send(p.Bye("server stopping"))
                else:  # a parked request waited already: it may ask again at once
                    await conn.send(p.NoWork(0.0 if conn.batches else self.options.no_work_retry))
                return
            sent = assignments[:len(assignments) - len(spilled)]
            conn.leased.update(a.replica_id for a in sent)
            if log.isEnabledFor(logging.DEBUG):
                for a in sent:
                    log.debug("leased duty %d (replica %d, %s v%d) to %s", a.duty_id,
                              a.replica_id, a.model, a.model_version, conn.name)
            await conn.write(frame)

    async def _failed(self, conn: Connection, exc: Exception) -> None:
        """A request of this connection failed on the server's side (the database, mostly):
        not the citizen's doing, so it keeps what it holds, hears why, and is closed (it
        reconnects with its backoff)."""
        if isinstance(exc, (psycopg.Error, PoolTimeout)):
            log.error("%s: database unavailable: %s", conn.peer, exc)
            error = p.Error("unavailable", "the server's database is unavailable")
        else:
            log.error("%s: unexpected error", conn.peer, exc_info=exc)
            error = p.Error("internal", "internal server error")
        conn.keep_leases = True
        with contextlib.suppress(Exception):
            await conn.send(error)
        conn.writer.close()

    async def _spill(self, conn: Connection, spilled: list[p.Assignment], sent: int) -> None:
        """Give back leased replicas that did not fit in the frame: uncharged when they only
        did not fit beside others, charged when one alone cannot be sent (an input imported
        before inputs were limited), so that duty fails after max_attempts with the reason."""
        alone = spilled[0] if sent == 0 else None
        async with self.pool.connection() as db:
            if alone is not None:
                await work.release(db, ids=[alone.replica_id], error=(
                    f"input too large to send: a duty may carry {p.MAX_INPUT} bytes"),
                    counts=self.scheduler.stats.replicas)
            rest = [a.replica_id for a in spilled if a is not alone]
            if rest:
                await work.release(db, ids=rest, failure=False,
                                   error="did not fit in one frame beside other duties",
                                   counts=self.scheduler.stats.replicas)

    async def _on_fetch_bundle(self, conn: Connection, message: p.FetchBundle) -> bool:
        found = await work.bundle_chunks(self.pool, message.sha256)
        if found is None:
            raise ProtocolError(f"no bundle {message.sha256[:64]!r}")
        size, chunks = found
        async with conn.sending:  # nothing else may come between the header and the payload
            conn.writer.write(p.encode(p.Bundle(message.sha256, size)))
            async for chunk in chunks:
                conn.writer.write(chunk)
                await conn.writer.drain()
        log.info("sent bundle %s (%d bytes) to %s", message.sha256[:12], size, conn.name)
        return True

    async def _on_result(self, conn: Connection, message: p.Result) -> bool:
        return await self._store(conn, [message], batch=False)

    async def _on_results(self, conn: Connection, message: p.Results) -> bool:
        if len(message.results) > RESULTS_MAX:
            raise ProtocolError(f"more than {RESULTS_MAX} results in one frame")
        return await self._store(conn, message.results, batch=True)

    async def _store(self, conn: Connection, results: list[p.Result], batch: bool) -> bool:
        """Hand results to the scheduler and read on; their acks go out once committed. A
        citizen that sends faster than the database stores waits (at most IN_FLIGHT frames)."""
        if len(conn.storing) >= IN_FLIGHT:
            await asyncio.wait(conn.storing, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(self._acknowledge(
            conn, results, self.scheduler.submit(conn.citizen_id, results), batch))
        conn.storing.add(task)
        task.add_done_callback(conn.storing.discard)
        return True

    async def _acknowledge(self, conn: Connection, results: list[p.Result],
                           answers: list[asyncio.Future[tuple[bool, str]]], batch: bool) -> None:
        try:
            done = [await answer for answer in answers]
        except Exception as exc:
            return await self._failed(conn, exc)
        acks = [p.Ack(result.replica_id, accepted, None if accepted else what)
                for result, (accepted, what) in zip(results, done)]
        conn.leased.difference_update(r.replica_id for r in results)
        with contextlib.suppress(ConnectionError, OSError):
            await conn.send(p.Acks(acks) if batch else acks[0])

    async def _on_heartbeat(self, conn: Connection, message: p.Heartbeat) -> bool:
        # A citizen computes one replica at a time: the first it runs is the one started.
        self.scheduler.beat(conn.citizen_id, message.running[0] if message.running else None)
        return True

    async def _on_bye(self, conn: Connection, message: p.Bye) -> bool:
        conn.said_bye = True
        return False
