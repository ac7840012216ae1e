"""Control operations leave two traces: a row in ``audit`` (who did what, when) and a
``NOTIFY civic_control`` that every server on the database listens to, so each one honours the
operation at once (servers also re-read control state every few seconds, in case a
notification was missed while their listening connection was down)."""

from __future__ import annotations

import getpass
import socket
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

CONTROL = "civic_control"  # the channel; the payload is the action, e.g. 'dataset pause'


def actor() -> str:
    """The operator, as user@host of the process running the command."""
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
