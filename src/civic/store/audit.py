"""Control operations leave two traces: a row in ``audit`` (who did what, when) and a
``NOTIFY civic_control`` that every server on the database listens to, so each one honours the
operation at once (servers also re-read control state every few seconds, in case a
notification was missed while their listening connection was down)."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

CONTROL = "civic_control"  # the channel; the payload is the action, e.g. 'dataset pause'
_acting: ContextVar[str | None] = ContextVar("civic_actor", default=None)


@contextmanager
def acting_as(who: str) -> Iterator[None]:
    """Audit operations done inside as ``who`` (the dashboard's logged-in operator), not as the
    user running the server process."""
    token = _acting.set(who)
    try:
        yield
    finally:
        _acting.reset(token)


def actor() -> str:
    """The operator: who ``acting_as`` names, else user@host of the process running the
    command."""
    if (who := _acting.get()) is not None:
        return who
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record(conn: Connection, action: str, target: str, detail: dict[str, Any] | None = None,
           ) -> None:
    """Audit ``action`` on ``target`` and signal the servers; both take effect when the
    caller's transaction commits, so a failed operation leaves no trace and wakes nobody."""
    conn.execute("INSERT INTO audit (actor, action, target, detail) VALUES (%s, %s, %s, %s)",
                 (actor(), action, target, Jsonb(detail or {})))
    conn.execute("SELECT pg_notify(%s, %s)", (CONTROL, action))
