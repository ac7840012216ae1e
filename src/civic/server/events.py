"""The server's log lines at INFO and above, kept in the ``events`` table.

A logging handler queues each record (a deque append: never blocks the event loop, nor any
thread that logs); a task writes what queued once a second at most, in one INSERT. When the
queue is full or the database is away, lines are dropped and counted, and the count is written
with the next batch that gets through. DEBUG lines (per lease, per result) never get here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from datetime import datetime, timezone

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from civic.store import servers

QUEUE = 10_000  # lines waiting to be written; more are dropped and counted
MESSAGE_MAX = 4000  # characters of one line kept
EVERY = 1.0  # seconds between writes, at least

log = logging.getLogger("civic.server")


class EventLog(logging.Handler):
    """Queues this process's log records for ``write``; attach it to the 'civic' logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.queue: collections.deque[tuple[datetime, str, str, str]] = collections.deque()
        self.dropped = 0
        self._lost = 0  # dropped and not yet reported
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            line = (datetime.fromtimestamp(record.created, timezone.utc), record.levelname,
                    record.name, message[:MESSAGE_MAX])
        except Exception:  # a bad format string: logging's own report, never a raise here
            self.handleError(record)
            return
        with self._guard:
            if len(self.queue) >= QUEUE:
                self.dropped += 1
            else:
                self.queue.append(line)

    def take(self) -> tuple[list[tuple[datetime, str, str, str]], int]:
        """What queued and how many were dropped since the last take."""
        with self._guard:
            lines, dropped = list(self.queue), self.dropped
            self.queue.clear()
            self.dropped = 0
        return lines, dropped

    async def write(self, pool: AsyncConnectionPool, server_id: str) -> None:
        """Write what queued once a second at most, until cancelled (then ``write_now``)."""
        while True:
            await asyncio.sleep(EVERY)
            self._lost = await self._flush(pool, server_id, self._lost)

    async def write_now(self, pool: AsyncConnectionPool, server_id: str) -> None:
        """Write what queued now (the server stops)."""
        self._lost = await self._flush(pool, server_id, self._lost)

    async def _flush(self, pool: AsyncConnectionPool, server_id: str, lost: int) -> int:
        lines, dropped = self.take()
        lost += dropped
        if not lines and not lost:
            return 0
        if lost:
            lines.append((datetime.now(timezone.utc), "WARNING", log.name,
                          f"{lost} log line(s) not kept (the database was unavailable or "
                          "the queue full)"))
        try:
            async with pool.connection(timeout=5) as db:
                await servers.write_events(db, server_id, lines)
        except (psycopg.Error, PoolTimeout, OSError):
            return lost + len(lines) - (1 if lost else 0)
        return 0
