"""A protocol-level load generator: simulated citizens over real TCP that run no model and
answer every assignment at once, its input as its output.

Each simulated citizen says hello (the join token on first contact, then the credential it was
given, so a project's citizens keep their history), with a host key of its own so no
distinct-source rule keeps it from a duty. It asks for ``prefetch`` duties and, for every duty
frame, sends all its results and its next request in one write, without waiting for acks:
one ``results`` frame when the server's welcome offers ``batches``, else one ``result`` frame
per assignment (an older server handles a connection's frames in order, so the acks follow).
A reader per citizen takes ``duty``, ``ack``/``acks`` and ``no-work`` in whatever order they
come; after ``no-work`` it asks again ``retry_after`` seconds later, as the agent does. A
server with batches may park a request instead: nothing to do then but wait.

Frames are built and parsed here with ``json`` directly, not through the protocol's dataclasses,
so that the generator costs the machine as little as possible; the message and field names are
the protocol's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from civic import protocol as p

BATCHES = getattr(p, "BATCHES", "batches")
HANDSHAKES = 8  # hellos in flight at once (a server takes 16 per address)


class LoadError(RuntimeError):
    """The server refused, closed, or stopped making progress."""


@dataclass
class Identity:
    """A simulated citizen: its name and host key, and its credential once it has one."""

    name: str
    host: str
    citizen_id: str | None = None
    secret: str | None = None


def identities(prefix: str, count: int) -> list[Identity]:
    return [Identity(f"{prefix}-{i}", f"{prefix}-host-{i}") for i in range(count)]


@dataclass
class Probe:
    """Called around the timed window: ``start`` just before the first request, ``stop`` the
    moment the last result is acknowledged, ``quiet`` a little later (PostgreSQL publishes a
    backend's counters within about a second of it going idle)."""

    start: Callable[[], None] = lambda: None
    stop: Callable[[], None] = lambda: None
    quiet: Callable[[], None] = lambda: None


@dataclass
class LoadResult:
    accepted: int  # results acknowledged as accepted in the window
    refused: int
    seconds: float
    batches: bool  # the server offered batches (results/acks frames)
    no_work: int
    reasons: list[str] = field(default_factory=list)  # a few refusal reasons


def _frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return p.HEADER.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = p.HEADER.unpack(await reader.readexactly(p.HEADER.size))
    return json.loads(await reader.readexactly(length))


class _Tally:
    def __init__(self, target: int) -> None:
        self.target, self.accepted, self.refused, self.no_work = target, 0, 0, 0
        self.reasons: list[str] = []
        self.done = asyncio.Event()
        self.progress = time.monotonic()

    def ack(self, ack: dict[str, Any]) -> None:
        if ack.get("accepted"):
            self.accepted += 1
            self.progress = time.monotonic()
            if self.accepted >= self.target:
                self.done.set()
        else:
            self.refused += 1
            if len(self.reasons) < 5:
                self.reasons.append(str(ack.get("reason")))


class _Citizen:
    def __init__(self, me: Identity, address: tuple[str, int], token: str, prefetch: int,
                 tally: _Tally) -> None:
        self.me, self.address, self.token, self.prefetch, self.tally = (
            me, address, token, prefetch, tally)
        self.batches = False
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._sleepers: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(*self.address)
        me = self.me
        self.writer.write(_frame({
            "type": "hello", "version": p.PROTOCOL_VERSION, "name": me.name,
            "platform": "linux-x86_64 loadgen", "citizen_id": me.citizen_id, "secret": me.secret,
            "token": None if me.citizen_id else self.token, "host": me.host, "memory": 0,
            "builds": True, "held": [], "features": [BATCHES]}))
        welcome = await asyncio.wait_for(_read(self.reader), 30)
        if welcome.get("type") != "welcome":
            raise LoadError(f"{me.name}: expected welcome, got {welcome}")
        if welcome.get("secret"):
            me.citizen_id, me.secret = welcome["citizen_id"], welcome["secret"]
        self.batches = BATCHES in (welcome.get("features") or [])

    def _request(self) -> bytes:
        return _frame({"type": "request-duty", "count": self.prefetch})

    async def run(self) -> None:
        assert self.reader is not None and self.writer is not None
        reader, writer, tally = self.reader, self.writer, self.tally
        writer.write(self._request())
        while True:
            message = await _read(reader)
            kind = message.get("type")
            if kind == "duty":
                results = [{"replica_id": a["replica_id"], "exit_code": 0, "output": a["input"],
                            "error": None, "stderr_tail": "", "elapsed": 0.0}
                           for a in message["assignments"]]
                if self.batches:
                    out = _frame({"type": "results", "results": results})
                else:
                    out = b"".join(_frame({"type": "result", **r}) for r in results)
                writer.write(out + (b"" if tally.done.is_set() else self._request()))
                await writer.drain()
            elif kind == "acks":
                for ack in message["acks"]:
                    tally.ack(ack)
            elif kind == "ack":
                tally.ack(message)
            elif kind == "no-work":
                tally.no_work += 1
                sleeper = asyncio.ensure_future(self._again(float(message.get("retry_after", 2))))
                self._sleepers.add(sleeper)
                sleeper.add_done_callback(self._sleepers.discard)
            elif kind in ("bye", "error"):
                if tally.done.is_set():
                    return
                raise LoadError(f"{self.me.name}: server sent {message}")

    async def _again(self, after: float) -> None:
        await asyncio.sleep(after)
        if not self.tally.done.is_set() and self.writer is not None:
            self.writer.write(self._request())

    async def close(self) -> None:
        for sleeper in list(self._sleepers):
            sleeper.cancel()
        if self.writer is None:
            return
        try:
            self.writer.write(_frame({"type": "bye", "reason": "load generator done"}))
            await asyncio.wait_for(self.writer.drain(), 5)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        self.writer.close()


async def drive(addresses: list[tuple[str, int]], citizens: list[Identity], token: str,
                prefetch: int, results: int, probe: Probe | None = None, *,
                limit: float | None = None, settle: float = 1.2, stall: float = 60.0
                ) -> LoadResult:
    """Connect ``citizens`` (round-robin over ``addresses``), then time how long the server
    takes to accept ``results`` results, or how many it accepts within ``limit`` seconds,
    whichever comes first. Raises LoadError when it stops making progress."""
    probe = probe or Probe()
    tally = _Tally(results)
    sims = [_Citizen(me, addresses[i % len(addresses)], token, prefetch, tally)
            for i, me in enumerate(citizens)]
    # A server refuses more than a few connections per address still in their handshake.
    handshakes = asyncio.Semaphore(HANDSHAKES)

    async def connect(sim: _Citizen) -> None:
        async with handshakes:
            await sim.connect()

    await asyncio.gather(*(connect(sim) for sim in sims))
    await asyncio.sleep(settle)
    probe.start()
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(sim.run()) for sim in sims]
    try:
        while not tally.done.is_set():
            if limit is not None and time.perf_counter() - started >= limit:
                tally.done.set()
                break
            failed = [t for t in tasks if t.done()]
            if failed and not tally.done.is_set():
                failed[0].result()  # raises what stopped it
                raise LoadError("a simulated citizen stopped early")
            if time.monotonic() - tally.progress > stall:
                raise LoadError(f"no result accepted for {stall:.0f}s: {tally.accepted} of "
                                f"{results} accepted, {tally.refused} refused {tally.reasons}")
            with_timeout = asyncio.ensure_future(tally.done.wait())
            await asyncio.wait([with_timeout, *tasks], timeout=0.2,
                               return_when=asyncio.FIRST_COMPLETED)
            with_timeout.cancel()
        elapsed = time.perf_counter() - started
        accepted = tally.accepted
        probe.stop()
        await asyncio.sleep(settle)
        probe.quiet()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(sim.close() for sim in sims), return_exceptions=True)
    return LoadResult(accepted, tally.refused, elapsed, any(s.batches for s in sims),
                      tally.no_work, tally.reasons)
