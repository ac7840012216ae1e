"""Blocking and unblocking citizens and volunteers (synchronous: the CLI and the console).

A block commits with its audit row and the leases the blocked citizens held given back to the
others, charged to no duty; from then on they lease nothing, are refused at hello, and the
server holding each one's connection drops it at once, saying why (NOTIFY civic_control).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import errors
from psycopg.rows import dict_row

from civic.errors import NotFound, StoreError, UsageError
from civic.store import audit
from civic.store.db import connect, transaction
from civic.store.queries import q

REASON_MAX = 500
RETRIES = 3


@dataclass(frozen=True)
class Blocked:
    """What a block or an unblock did: to which citizen or volunteer, and to how many leases."""

    kind: str  # citizen or volunteer
    name: str
    id: str  # the citizen's uuid, or the volunteer's number
    blocked: bool  # blocked now
    changed: bool  # False: it was so already (a block changes the reason all the same)
    reason: str | None  # the reason now (a block without one keeps the earlier one)
    blocked_at: datetime | None
    citizens: int  # citizens concerned (1 for a citizen)
    released: int  # leases given back to other citizens


def _reason(reason: str | None) -> str | None:
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > REASON_MAX:
        raise UsageError(f"--reason is {len(reason)} characters; at most {REASON_MAX}")
    return reason


def _citizen(conn: Any, who: str) -> dict[str, Any]:
    try:
        as_id: str | None = str(uuid.UUID(who))
    except ValueError:
        as_id = None
    rows = conn.execute(q("citizens_named"), {"id": as_id, "name": who}).fetchall()
    if not rows:
        raise NotFound(f"no citizen named or numbered {who!r}; see civic status --json")
    if len(rows) > 1:
        raise UsageError(f"{len(rows)} citizens are named {who!r}: give its id instead "
                         f"({', '.join(r['id'] for r in rows[:5])})")
    return rows[0]


def _release(conn: Any, citizen_ids: list[str], error: str) -> int:
    """Give back what these citizens hold, charging no duty (a block is no failure of its)."""
    conn.execute(q("lock_held"), {"ids": citizen_ids})
    released = 0
    for citizen_id in citizen_ids:
        row = conn.execute(q("release_replicas"), {
            "ids": [], "overdue": False, "citizen_id": citizen_id, "all_but": True, "keep": [],
            "failure": False, "error": error, "hello": None, "unstarted": True}).fetchone()
        released += row["released"]
    if released:
        conn.execute(q("announce_work"))
    return released


def _retried(operation: Callable[[], Blocked]) -> Blocked:
    """Run a block again when it deadlocked with a server's batch after all (rare)."""
    for attempt in range(1, RETRIES + 1):
        try:
            return operation()
        except StoreError as exc:
            if attempt == RETRIES or not isinstance(
                    exc.__cause__, (errors.DeadlockDetected, errors.SerializationFailure)):
                raise
    raise AssertionError("unreachable")


def block_citizen(url: str, who: str, reason: str | None = None) -> Blocked:
    """Block a citizen by name or id; what it holds goes to others."""
    reason = _reason(reason)
    return _retried(lambda: _block_citizen(url, who, reason))


def _block_citizen(url: str, who: str, reason: str | None) -> Blocked:
    with transaction(url) as conn:
        conn.row_factory = dict_row
        row = _citizen(conn, who)
        at, reason = conn.execute(q("block_citizen"), {"id": row["id"], "reason": reason}
                             ).fetchone().values()
        released = _release(conn, [row["id"]], "citizen blocked")
        audit.record(conn, "citizen block", f"citizen {row['name']}",
                     {"id": row["id"], "reason": reason, "released": released})
    return Blocked("citizen", row["name"], row["id"], True, row["blocked_at"] is None, reason,
                   at, 1, released)


def unblock_citizen(url: str, who: str) -> Blocked:
    """Let a blocked citizen lease again (it connects again by itself, or when restarted)."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        row = _citizen(conn, who)
        conn.execute(q("unblock_citizen"), {"id": row["id"]})
        audit.record(conn, "citizen unblock", f"citizen {row['name']}", {"id": row["id"]})
    return Blocked("citizen", row["name"], row["id"], False, row["blocked_at"] is not None,
                   None, None, 1, 0)


def blocked_volunteers(url: str) -> dict[str, tuple[datetime, str | None]]:
    """The blocked volunteers: name → (since, reason)."""
    with connect(url) as conn:
        return {name: (at, reason) for name, at, reason in
                conn.execute(q("blocked_volunteers")).fetchall()}


def _volunteer(conn: Any, name: str) -> dict[str, Any]:
    row = conn.execute(q("volunteer_named"), {"name": name}).fetchone()
    if row is None:
        raise NotFound(f"no volunteer named {name!r}; see civic volunteer list")
    return row


def block_volunteer(url: str, name: str, reason: str | None = None) -> Blocked:
    """Block a volunteer: every citizen of theirs, connected or not, now or later."""
    reason = _reason(reason)
    return _retried(lambda: _block_volunteer(url, name, reason))


def _block_volunteer(url: str, name: str, reason: str | None) -> Blocked:
    with transaction(url) as conn:
        conn.row_factory = dict_row
        row = _volunteer(conn, name)
        at, reason = conn.execute(q("block_volunteer"), {"id": row["id"], "reason": reason}
                             ).fetchone().values()
        ids = [r["id"] for r in conn.execute(q("citizens_of_volunteer"), {"id": row["id"]})]
        released = _release(conn, ids, "volunteer blocked")
        audit.record(conn, "volunteer block", f"volunteer {name}",
                     {"reason": reason, "citizens": len(ids), "released": released})
    return Blocked("volunteer", name, str(row["id"]), True, row["blocked_at"] is None, reason,
                   at, len(ids), released)


def unblock_volunteer(url: str, name: str) -> Blocked:
    with transaction(url) as conn:
        conn.row_factory = dict_row
        row = _volunteer(conn, name)
        conn.execute(q("unblock_volunteer"), {"id": row["id"]})
        audit.record(conn, "volunteer unblock", f"volunteer {name}")
    return Blocked("volunteer", name, str(row["id"]), False, row["blocked_at"] is not None,
                   None, None, row["citizens"], 0)
