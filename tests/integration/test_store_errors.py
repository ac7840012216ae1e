"""psycopg errors stop at the store's boundary: callers (the CLI, ``civic run``) get StoreError,
whose message never holds the database password."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from civic.errors import StoreError
from civic.store import catalog, connect, transaction

pytestmark = pytest.mark.integration
SECRET = "S3cr&t-never-shown"


def test_an_error_inside_a_catalog_call_is_a_store_error(empty_database_url: str) -> None:
    with pytest.raises(StoreError, match='relation "models" does not exist') as caught:
        catalog.list_models(empty_database_url)  # no schema: the query fails, not the connection
    assert isinstance(caught.value.__cause__, psycopg.Error)  # kept for --debug


def test_a_database_that_cannot_be_reached_is_named_without_its_password(database_url: str
                                                                         ) -> None:
    url = make_conninfo(database_url, dbname="no_such_database", password=SECRET)
    with pytest.raises(StoreError, match="cannot reach PostgreSQL") as caught:
        catalog.status(url)
    assert SECRET not in str(caught.value)


def test_a_connection_lost_inside_the_block_is_a_store_error(database_url: str) -> None:
    url = make_conninfo(database_url, password=SECRET)
    with pytest.raises(StoreError, match="failed") as caught:
        with connect(url) as conn:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    assert SECRET not in str(caught.value)


def test_a_failed_transaction_is_rolled_back(database_url: str, h) -> None:
    with pytest.raises(StoreError, match="duplicate key"):
        with transaction(database_url) as conn:
            conn.execute("INSERT INTO volunteers (name, token_sha256) VALUES ('x', 'a')")
            conn.execute("INSERT INTO volunteers (name, token_sha256) VALUES ('x', 'b')")
    assert h.fetch(database_url, "SELECT count(*) FROM volunteers WHERE name = 'x'") == [(0,)]
