"""``logs`` in the console: the servers' log lines and events (the ``events`` table), the most
recent first, then followed live — one connection, one indexed query a second, so following
costs the servers nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from psycopg.rows import dict_row

from civic.errors import StoreError
from civic.store import connect, q

LEVEL_STYLE = {"WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}
DIM, RESET = "\x1b[2m", "\x1b[0m"
RECENT = 100  # events shown when following starts
BATCH = 500  # rows a query returns (console_events_since); a full batch is followed at once
RETRY = 5.0  # seconds before reconnecting after the database went away


def line(row: dict[str, Any]) -> str:
    """One event as a pane line: time, server, level, logger, message (coloured by level)."""
    server = str(row["server_id"])[:8] if row["server_id"] else "-"
    colour = LEVEL_STYLE.get(row["level"], "")
    return (f"{DIM}{row['at']:%H:%M:%S} {server}{RESET} {colour}{row['level']:<7}"
            f"{RESET if colour else ''} {row['logger']}: {row['message']}")


class Follower:
    """A thread printing new events into ``sink`` every ``interval`` seconds until stopped."""

    def __init__(self, url: str, sink: Callable[[list[str]], None], interval: float = 1.0
                 ) -> None:
        self.url, self.sink, self.interval = url, sink, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        since: int | None = None
        while not self._stop.is_set():
            try:
                with connect(self.url, autocommit=True) as conn:
                    if since is None:
                        since = conn.execute(q("console_events_start"),
                                             {"recent": RECENT}).fetchone()[0]
                    while not self._stop.is_set():
                        since = self._poll(conn, since)
            except StoreError as exc:
                self.sink([f"\x1b[31mlogs: {exc}; trying again in {RETRY:.0f}s{RESET}"])
                self._stop.wait(RETRY)

    def _poll(self, conn: Any, since: int) -> int:
        cursor = conn.cursor(row_factory=dict_row)
        rows = cursor.execute(q("console_events_since"), {"since": since}).fetchall()
        if rows:
            self.sink([line(r) for r in rows])
            since = rows[-1]["id"]
        if len(rows) < BATCH:
            self._stop.wait(self.interval)
        return since
