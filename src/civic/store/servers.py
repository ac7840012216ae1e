"""The servers sharing a database: their rows, drain and events (log lines).

Each ``civic server run`` registers itself, refreshes its row every few seconds and marks it
stopped when it stops cleanly. A drain is a flag on that row (``civic server drain ID``) or, for
the whole project, the setting 'drained', which servers started later honour too: a server
restarted by Docker during a drain must not resume leasing behind the operator's back. Leasing
reads both in its own transaction, so nothing is leased by a statement that starts after a
drain committed; servers also hear of it at once on ``civic_control``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row, tuple_row

from civic.errors import NotFound, UsageError
from civic.store import audit
from civic.store.db import connect, transaction
from civic.store.queries import q

ALIVE = 10.0  # seconds: a server not seen for longer is taken for dead (it beats every 2 s)
KEEP_EVENTS = 100_000  # at most this many events are kept (and a week of them)


@dataclass(frozen=True)
class ServerRow:
    """One server on the database, as ``list_servers`` shows it."""

    id: str
    address: str
    hostname: str
    pid: int
    version: str
    started_at: datetime
    seen_at: datetime
    stopped_at: datetime | None
    connections: int
    leased: int
    results: int
    draining: bool
    alive: bool


@dataclass(frozen=True)
class Event:
    """A server's log line, as stored in ``events``."""

    id: int
    at: datetime
    server_id: str | None
    level: str
    logger: str
    message: str


@dataclass(frozen=True)
class Drained:
    """What ``drain``/``undrain`` did: the servers whose flag it set, and the project's."""

    draining: bool
    servers: tuple[str, ...]
    project: bool  # the whole project (servers started later included)


# --- the CLI's side ---------------------------------------------------------------------------

def list_servers(url: str, everyone: bool = False) -> list[ServerRow]:
    """The servers alive now (with ``everyone``: the last 100, stopped or lost ones too)."""
    with connect(url, row_factory=class_row(ServerRow)) as conn:
        return conn.execute(q("list_servers"), {"alive": ALIVE, "all": everyone}).fetchall()


def _resolve(conn: Any, prefixes: Sequence[str]) -> list[str]:
    rows = conn.cursor(row_factory=tuple_row).execute(q("servers_prefixed"), {
        "prefixes": [p.strip().lower() for p in prefixes]}).fetchall()
    found: dict[str, list[str]] = {}
    for prefix, server_id in rows:
        found.setdefault(prefix, []).extend([server_id] if server_id else [])
    ids = []
    for prefix in (p.strip().lower() for p in prefixes):
        matches = found.get(prefix, [])
        if not prefix or not matches:
            raise NotFound(f"no server {prefix!r} on this database; see civic server servers")
        if len(matches) > 1:
            raise UsageError(f"{len(matches)} servers have ids starting with {prefix!r}: "
                             "give more of the id")
        ids.append(matches[0])
    return ids


def drain(url: str, server_ids: Sequence[str] = (), draining: bool = True) -> Drained:
    """Drain (or undrain) the servers named by id or id prefix; none named: the whole project,
    servers started later included."""
    with transaction(url) as conn:
        project = not server_ids
        if project:
            conn.execute(q("drain_project" if draining else "undrain_project"),
                         {"actor": audit.actor()})
            ids = None
        else:
            if not draining and conn.execute(q("project_drained")).fetchone() is not None:
                raise UsageError("the whole project is drained: `civic server undrain` (no "
                                 "server ids) resumes every server")
            ids = _resolve(conn, server_ids)
        done = [i for (i,) in conn.execute(q("set_draining"), {
            "draining": draining, "ids": ids, "alive": ALIVE}).fetchall()]
        audit.record(conn, "server drain" if draining else "server undrain",
                     "project" if project else "server " + " ".join(done),
                     {"servers": done})
    return Drained(draining, tuple(done), project)


def recent_events(url: str, limit: int = 50, server: str | None = None) -> list[Event]:
    """The last ``limit`` events (of one server, by id or prefix), oldest first."""
    with connect(url, row_factory=class_row(Event)) as conn:
        server_id = _resolve(conn, [server])[0] if server else None
        rows = conn.execute(q("recent_events"), {"limit": limit, "server_id": server_id}
                            ).fetchall()
    return rows[::-1]


def follow_events(url: str, after: int, server: str | None = None,
                  interval: float = 1.0) -> Iterator[Event]:
    """Events newer than id ``after``, as they are written, forever (a poll a second: servers
    write them at most once a second)."""
    with connect(url, autocommit=True, row_factory=class_row(Event)) as conn:
        server_id = _resolve(conn, [server])[0] if server else None
        while True:
            rows = conn.execute(q("events_after"), {"after": after, "server_id": server_id}
                                ).fetchall()
            for row in rows:
                after = row.id
                yield row
            if len(rows) < 1000:
                time.sleep(interval)


# --- the server's side ------------------------------------------------------------------------

async def register(conn: AsyncConnection, server_id: str, address: str, hostname: str,
                   pid: int, version: str) -> bool:
    """Add this server's row; returns whether it starts drained (the project is)."""
    row = await (await conn.execute(q("server_register"), {
        "id": server_id, "address": address, "hostname": hostname, "pid": pid,
        "version": version})).fetchone()
    return bool(row and row[0])


async def beat(conn: AsyncConnection, server_id: str, connections: int, leased: int,
               results: int) -> bool | None:
    """Refresh this server's row; returns whether it is to drain (None: its row is gone)."""
    row = await (await conn.execute(q("server_beat"), {
        "id": server_id, "connections": connections, "leased": leased, "results": results}
    )).fetchone()
    return None if row is None else bool(row[0])


async def stopped(conn: AsyncConnection, server_id: str, leased: int, results: int) -> None:
    await conn.execute(q("server_stopped"), {"id": server_id, "leased": leased,
                                             "results": results})


async def write_events(conn: AsyncConnection, server_id: str,
                       events: Sequence[tuple[datetime, str, str, str]]) -> None:
    """Store log lines ``(at, level, logger, message)`` in one statement."""
    await conn.execute(q("insert_events"), {
        "at": [e[0] for e in events], "server_ids": [server_id] * len(events),
        "levels": [e[1] for e in events], "loggers": [e[2] for e in events],
        "messages": [e[3] for e in events]})


async def trim(conn: AsyncConnection, keep: int = KEEP_EVENTS) -> tuple[int, int]:
    """Delete old events and servers long gone, if this server is the elected reaper now;
    returns how many of each."""
    async with conn.transaction():
        (elected,) = await (await conn.execute(q("reaper_lock"))).fetchone()  # type: ignore[misc]
        if not elected:
            return 0, 0
        cursor = conn.cursor(row_factory=dict_row)
        row = await (await cursor.execute(q("trim_events"), {"keep": keep})).fetchone()
        return row["events"], row["servers"]  # type: ignore[index]
