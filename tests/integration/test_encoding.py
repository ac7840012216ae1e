"""A database that does not store UTF-8 is refused up front, with what to do about it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from civic_cli import CIVIC
from psycopg import sql
from psycopg.conninfo import make_conninfo

from civic.errors import StoreError
from civic.store import migrate


@pytest.fixture
def sql_ascii_url(postgres_url: str) -> Iterator[str]:
    name = f"test_ascii_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
                             " TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_migrate_refuses_a_sql_ascii_database_and_creates_nothing(sql_ascii_url: str) -> None:
    with pytest.raises(StoreError, match="uses the SQL_ASCII encoding; CIVIC needs UTF8"):
        migrate(sql_ascii_url)
    with psycopg.connect(sql_ascii_url) as conn:
        assert conn.execute("SELECT to_regclass('civic_migrations')").fetchone()[0] is None


@pytest.mark.parametrize("command", [["status"], ["server", "run", "--host", "127.0.0.1",
                                                  "--port", "0"]])
def test_the_cli_and_the_server_say_what_to_do(sql_ascii_url: str, command: list[str]) -> None:
    done = subprocess.run([CIVIC, "--database-url", sql_ascii_url, *command], text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 4, done.stderr
    assert "SQL_ASCII" in done.stderr and "createdb -E UTF8" in done.stderr
    assert "Traceback" not in done.stderr
