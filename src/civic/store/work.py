"""The server's side of the store: citizens, leases, results (asyncio, psycopg 3)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, MutableMapping, Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from civic.errors import Refused
from civic.protocol import Assignment
from civic.store import leasing
from civic.store.queries import q

BUNDLE_CHUNK = 1024 * 1024


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def ensure_join_token(conn: AsyncConnection) -> None:
    """Create the join token unless one exists (the first server start does this)."""
    await conn.execute(q("ensure_join_token"), {"token": secrets.token_urlsafe(24)})


async def register(conn: AsyncConnection, *, citizen_id: str | None, secret: str | None,
                   name: str, platform: str, address: str, token: str | None = None,
                   host: str = "", memory: int = 0, builds: bool = True) -> tuple[str, str | None]:
    """Authenticate a citizen by its credential, or issue a new identity on first contact.

    Returns the citizen id and, for a new identity only, its secret (stored here only hashed).
    A known id with a wrong secret is refused, so no one can act as another citizen. A new
    identity (no id, or one this store never issued) needs a token: a volunteer's own (the
    citizen is that volunteer's) or the server-wide join token (the built-in volunteer 'lab'),
    once one exists. Citizens of a removed volunteer are refused. ``host``, ``memory`` and
    ``builds`` are what the citizen said of itself in its hello; an empty host makes it a host
    of its own.
    """
    if citizen_id:
        try:
            uuid.UUID(citizen_id)
        except ValueError:
            raise Refused("malformed citizen id") from None
        cursor = conn.cursor(row_factory=dict_row)
        row = await (await cursor.execute(q("find_citizen"), {"id": citizen_id})).fetchone()
        if row is not None:
            if not secret or not hmac.compare_digest(row["secret_sha256"], _hash(secret)):
                raise Refused("wrong credential for this citizen id")
            if (why := refusal(row)) is not None:
                raise Refused(why)
            await conn.execute(q("citizen_seen"), {
                "id": citizen_id, "connected": True, "name": name, "platform": platform,
                "address": address, "host": host, "memory": memory, "builds": builds})
            return citizen_id, None
    volunteer_id = await _volunteer_of(conn, token)
    new_id, new_secret = str(uuid.uuid4()), secrets.token_urlsafe(32)
    await conn.execute(q("insert_citizen"), {
        "id": new_id, "secret_sha256": _hash(new_secret), "name": name, "platform": platform,
        "address": address, "volunteer_id": volunteer_id, "host": host, "memory": memory,
        "builds": builds})
    return new_id, new_secret


async def _volunteer_of(conn: AsyncConnection, token: str | None) -> int:
    """The volunteer a new citizen joins as, by its token; Refused when the token is no good."""
    if token:
        row = await (await conn.execute(q("volunteer_by_token"),
                                        {"token_sha256": _hash(token)})).fetchone()
        if row is not None:
            if row[2]:
                raise Refused(f"volunteer {row[1]!r} was removed from this server; its token "
                              "is refused")
            if row[3]:
                raise Refused(f"volunteer {row[1]!r} is blocked on this server"
                              + (f": {row[4]}" if row[4] else ""))
            return row[0]
    join = await (await conn.execute(q("join_token"))).fetchone()
    if join is not None and not hmac.compare_digest((token or "").encode(), join[0].encode()):
        raise Refused("a valid join token is needed to join this server (the admin gets it "
                      "with `civic server token`, or a volunteer's own with `civic volunteer "
                      "add`; citizens take it from CIVIC_TOKEN)")
    (lab,) = await (await conn.execute(q("lab_volunteer"))).fetchone()  # type: ignore[misc]
    blocked, reason = await (await conn.execute(q("volunteer_blocked"), {"id": lab})
                             ).fetchone()  # type: ignore[misc]
    if blocked:
        raise Refused("volunteer 'lab' (the server-wide join token) is blocked on this server"
                      + (f": {reason}" if reason else ""))
    return lab


def refusal(row: Mapping[str, Any]) -> str | None:
    """Why a citizen is refused (its volunteer removed or blocked, or itself blocked), from a
    row of ``find_citizen`` or ``refused_citizens``; None when it is not."""
    if row["removed"]:
        return (f"volunteer {row['volunteer']!r} was removed from this server; its citizens "
                "are refused")
    if row["volunteer_blocked"]:
        return (f"volunteer {row['volunteer']!r} is blocked on this server"
                + (f": {row['volunteer_reason']}" if row["volunteer_reason"] else ""))
    if row["blocked"]:
        return (f"citizen {row['name']!r} is blocked on this server"
                + (f": {row['blocked_reason']}" if row["blocked_reason"] else ""))
    return None


async def greeted(conn: AsyncConnection, citizen_id: str) -> int:
    """The citizen said hello on a new connection: returns that hello's number."""
    row = await (await conn.execute(q("citizen_greeted"), {"id": citizen_id})).fetchone()
    return row[0] if row else 0


async def left(conn: AsyncConnection, citizen_id: str, hello: int) -> None:
    """The connection of hello number ``hello`` ended: the citizen is disconnected, unless it
    said hello again since (to this server or another)."""
    await conn.execute(q("citizen_left"), {"id": citizen_id, "hello": hello})


async def sighted(conn: AsyncConnection, citizen_ids: Collection[str]) -> None:
    """These citizens are alive (their heartbeats said so)."""
    await conn.execute(q("citizens_sighted"), {"ids": list(citizen_ids)})


async def start(conn: AsyncConnection, started: Mapping[str, int], margin: float) -> int:
    """Citizens started computing replicas (citizen id → replica id, from their heartbeats):
    each deadline becomes the model's timeout + ``margin`` from now, once. Returns how many
    started: not one that is not its citizen's lease, started already, or whose citizen still
    runs another."""
    cursor = await conn.execute(q("start_replicas"), {
        "ids": list(started.values()), "citizen_ids": list(started), "margin": margin})
    return len(await cursor.fetchall())


async def lease(conn: AsyncConnection, citizen_id: str, count: int, **options: Any
                ) -> list[Assignment]:
    """Lease up to ``count`` replicas to one citizen; see ``lease_many``."""
    return (await lease_many(conn, [(citizen_id, count)], **options))[0]


async def lease_many(conn: AsyncConnection, requests: Sequence[tuple[str, int]], *,
                     window: float = 60.0, cap: int = 32, pause: float = 15.0,
                     datasets: Sequence[int] | None = None, server_id: str | None = None
                     ) -> list[list[Assignment]]:
    """Lease replicas to citizens, ``(citizen id, count)`` each, in order, in three round trips:
    each citizen holds at most ``cap`` in all, each replica is to be started within ``window``
    seconds, a duty a citizen failed comes back to it after ``pause`` seconds, and ``datasets``
    restricts leasing to those datasets (None: any). Blocked citizens get nothing, nor does
    anyone while server ``server_id`` (or the whole project) is drained."""
    async with conn.pipeline():  # nested in the caller's pipeline, if any
        return await leasing.lease_many(conn, requests, window=window, cap=cap, pause=pause,
                                        datasets=datasets, server_id=server_id)


async def release(conn: AsyncConnection, *, error: str, ids: Sequence[int] = (),
                  overdue: bool = False, citizen_id: str | None = None,
                  keep: Sequence[int] | None = None, failure: bool = True,
                  unstarted: bool = True, hello: int | None = None,
                  counts: MutableMapping[tuple[str, str], int] | None = None) -> int:
    """Give up leased replicas so others lease them again; returns how many.

    Which: those in ``ids`` (only the citizen's, when ``citizen_id`` is given; with ``hello``,
    only while that is the citizen's latest hello: a newer connection holds them), those past their
    deadline (``overdue``), or, when ``keep`` is given, all of ``citizen_id``'s but those.
    Each counts as a failure of its duty when ``failure`` (a citizen that vanished); one past
    its deadline, or any when not ``unstarted``, only if it had started (an unstarted one never
    ran the model: one leased ahead, or one that merely missed its start window).
    ``counts`` (a server's figures) gets the replicas released, as (model name, 'expired').
    """
    row = await (await conn.execute(q("release_replicas"), {
        "ids": list(ids), "overdue": overdue, "citizen_id": citizen_id,
        "all_but": keep is not None, "keep": list(keep or ()), "failure": failure,
        "error": error, "hello": hello, "unstarted": unstarted})).fetchone()
    released = row[0] if row else 0
    if counts is not None and released:
        for model, n in (row[3] or {}).items():  # type: ignore[index]
            counts[model, "expired"] = counts.get((model, "expired"), 0) + n
    if released:
        await announce_work(conn)
    return released


async def announce_work(conn: AsyncConnection) -> None:
    """Tell every server on this database that duties may be leased again (at commit), so the
    requests parked there try again. Never per duty: NOTIFY serialises commits."""
    await conn.execute(q("announce_work"))


async def reap(conn: AsyncConnection, *, error: str,
               counts: MutableMapping[tuple[str, str], int] | None = None) -> int:
    """Release the replicas past their deadline, if this server is the elected reaper now (it
    holds the reaper's advisory lock for this transaction); 0 when another server is."""
    async with conn.transaction():
        (elected,) = await (await conn.execute(q("reaper_lock"))).fetchone()  # type: ignore[misc]
        return await release(conn, overdue=True, error=error, counts=counts) if elected else 0


async def refused(conn: AsyncConnection, citizen_ids: Sequence[str]) -> dict[str, str]:
    """Of these citizens, those refused now (volunteer removed or blocked, or blocked), with
    what they are told."""
    if not citizen_ids:
        return {}
    cursor = conn.cursor(row_factory=dict_row)
    rows = await (await cursor.execute(q("refused_citizens"), {"ids": list(citizen_ids)})
                  ).fetchall()
    return {row["id"]: refusal(row) or "refused" for row in rows}


async def bundle_chunks(pool: AsyncConnectionPool, sha256: str) -> tuple[int, AsyncIterator[bytes]] | None:
    """The size of a bundle and an iterator over its bytes, read in chunks; None if unknown."""
    async with pool.connection() as conn:
        row = await (await conn.execute(q("bundle_size"), {"sha256": sha256})).fetchone()
    if row is None:
        return None
    size = row[0]

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, size, BUNDLE_CHUNK):
            async with pool.connection() as conn:
                cursor = await conn.execute(q("bundle_chunk"), {
                    "sha256": sha256, "offset": offset, "length": BUNDLE_CHUNK})
                (chunk,) = await cursor.fetchone()  # type: ignore[misc]
            yield bytes(chunk)

    return size, chunks()
