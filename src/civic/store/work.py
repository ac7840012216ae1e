"""The server's side of the store: citizens, leases, results (asyncio, psycopg 3)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import AsyncIterator

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from civic.errors import Refused
from civic.protocol import Assignment
from civic.store.queries import q

BUNDLE_CHUNK = 1024 * 1024


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def ensure_join_token(conn: AsyncConnection) -> None:
    """Create the join token unless one exists (the first server start does this)."""
    await conn.execute(q("ensure_join_token"), {"token": secrets.token_urlsafe(24)})


async def register(conn: AsyncConnection, *, citizen_id: str | None, secret: str | None,
                   name: str, platform: str, address: str,
                   token: str | None = None) -> tuple[str, str | None]:
    """Authenticate a citizen by its credential, or issue a new identity on first contact.

    Returns the citizen id and, for a new identity only, its secret (stored here only hashed).
    A known id with a wrong secret is refused, so no one can act as another citizen. A new
    identity (no id, or one this store never issued) needs the join token once one exists.
    """
    if citizen_id:
        try:
            uuid.UUID(citizen_id)
        except ValueError:
            raise Refused("malformed citizen id") from None
        row = await (await conn.execute(q("find_citizen"), {"id": citizen_id})).fetchone()
        if row is not None:
            if not secret or not hmac.compare_digest(row[1], _hash(secret)):
                raise Refused("wrong credential for this citizen id")
            await conn.execute(q("citizen_seen"), {"id": citizen_id, "connected": True,
                                                   "name": name, "platform": platform,
                                                   "address": address})
            return citizen_id, None
    row = await (await conn.execute(q("join_token"))).fetchone()
    if row is not None and not hmac.compare_digest((token or "").encode(), row[0].encode()):
        raise Refused("a valid join token is needed to join this server (the admin gets it "
                      "with `civic server token`; citizens take it from CIVIC_TOKEN)")
    new_id, new_secret = str(uuid.uuid4()), secrets.token_urlsafe(32)
    await conn.execute(q("insert_citizen"), {"id": new_id, "secret_sha256": _hash(new_secret),
                                             "name": name, "platform": platform,
                                             "address": address})
    return new_id, new_secret


async def seen(conn: AsyncConnection, citizen_id: str, connected: bool = True) -> None:
    await conn.execute(q("citizen_seen"), {"id": citizen_id, "connected": connected,
                                           "name": None, "platform": None, "address": None})


async def extend(conn: AsyncConnection, citizen_id: str, replica_ids: list[int],
                 margin: float) -> None:
    """Move the deadlines of replicas a citizen is still working on (it sent a heartbeat)."""
    if replica_ids:
        await conn.execute(q("extend_leases"), {"ids": replica_ids, "citizen_id": citizen_id,
                                                "margin": margin})


async def lease(conn: AsyncConnection, citizen_id: str, count: int,
                margin: float) -> list[Assignment]:
    """Lease up to ``count`` replicas to a citizen, each with a deadline of timeout + margin."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(q("lease_duties"), {"citizen_id": citizen_id, "count": count,
                                             "margin": margin})
    return [Assignment(replica_id=row["replica_id"], duty_id=row["duty_id"], model=row["model"],
                       model_version=row["model_version"], bundle_sha256=row["bundle_sha256"],
                       bundle_size=row["bundle_size"], run=row["manifest"]["run"],
                       build=row["manifest"].get("build"),
                       timeout=float(row["manifest"]["timeout"]), input=row["input"],
                       memory=_memory(row["manifest"].get("memory")))
            for row in await cursor.fetchall()]


def _memory(limit: str | None) -> int | None:
    """A manifest's ``memory`` ("512m", "2g") in bytes; None: no limit."""
    if not limit:
        return None
    return int(limit[:-1]) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[limit[-1]]


async def release(conn: AsyncConnection, *, error: str, ids: list[int] | None = None,
                  overdue: bool = False, citizen_id: str | None = None,
                  failure: bool = True) -> int:
    """Give up leased replicas — by id, past their deadline, or all of one citizen's — so
    others lease them again.

    Each counts as a failure of its duty, unless ``failure`` is False (a citizen that said bye
    before stopping, or whose server died under it, did nothing wrong).
    """
    rows = await (await conn.execute(q("release_replicas"), {
        "ids": ids or [], "overdue": overdue, "citizen_id": citizen_id,
        "error": error})).fetchall()
    for duty_id, lost in rows:
        if failure:
            await conn.execute(q("count_failures"), {"duty_id": duty_id, "n": lost, "error": error})
        else:
            await conn.execute(q("open_slots"), {"duty_id": duty_id, "slots": lost})
    return sum(lost for _, lost in rows)


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
