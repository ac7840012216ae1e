"""A real PostgreSQL for the integration tests, and helpers shared by them.

One server per session: ``CIVIC_TEST_DATABASE_URL`` if set, else the embedded one. The schema is
migrated once into a template database; every test gets its own copy (``CREATE DATABASE ...
TEMPLATE``), dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import yaml
from dbkit import execute, fetch
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from civic import protocol as p
from civic.server import assimilate
from civic.store import catalog, embedded_url, migrate, work

REPO = Path(__file__).resolve().parents[2]
ALPHABET = REPO / "examples" / "alphabet"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder needs a real PostgreSQL."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.integration)


# ---------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------

def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def _create(base_url: str, name: str, template: str) -> str:
    with _admin(base_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    return make_conninfo(base_url, dbname=name)


def _drop(base_url: str, name: str) -> None:
    with _admin(base_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a PostgreSQL server we may create databases on."""
    return os.environ.get("CIVIC_TEST_DATABASE_URL") or embedded_url(tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="session")
def template_db(postgres_url: str) -> Iterator[str]:
    """Name of a database holding the migrated schema, copied for every test."""
    name = f"civic_template_{uuid.uuid4().hex[:12]}"
    url = _create(postgres_url, name, "template0")
    try:
        migrate(url)
        yield name
    finally:
        _drop(postgres_url, name)


@pytest.fixture
def database_url(postgres_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"test_{uuid.uuid4().hex}"
    url = _create(postgres_url, name, template_db)
    try:
        yield url
    finally:
        _drop(postgres_url, name)


@pytest.fixture
def empty_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh database without the CIVIC schema."""
    name = f"test_empty_{uuid.uuid4().hex}"
    url = _create(postgres_url, name, "template0")
    try:
        yield url
    finally:
        _drop(postgres_url, name)


# ---------------------------------------------------------------------------------------------
# The alphabet model
# ---------------------------------------------------------------------------------------------

def next_letter(letter: str) -> str:
    return LETTERS[(LETTERS.index(letter) + 1) % 26]


def alphabet_output(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """What the alphabet model writes for a duty's input."""
    return [{"original_letter": r["letter"], "letter": next_letter(r["letter"])} for r in records]


@pytest.fixture
def model_copy(tmp_path: Path) -> Callable[..., Path]:
    """Copy examples/alphabet under tmp_path; keyword arguments replace keys of its civic.yaml."""
    counter = iter(range(1000))

    def make(**changes: Any) -> Path:
        dest = tmp_path / f"model-{next(counter)}"
        shutil.copytree(ALPHABET, dest)
        if changes:
            manifest = yaml.safe_load((dest / "civic.yaml").read_text())
            manifest.update(changes)
            (dest / "civic.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        return dest

    return make


@pytest.fixture
def alphabet(database_url: str) -> catalog.DatasetImported:
    """The alphabet model added and its 26 letters imported (2 replicas, quorum 2, 1 per duty)."""
    catalog.add_model(database_url, ALPHABET)
    return catalog.import_dataset(database_url, "alphabet", ALPHABET / "letters.csv")


# ---------------------------------------------------------------------------------------------
# Async helpers (the server's side of the store)
# ---------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def open_pool(url: str, size: int = 4) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(url, min_size=1, max_size=size, open=False)
    await pool.open(wait=True, timeout=15)
    try:
        yield pool
    finally:
        await pool.close()


async def call(pool: AsyncConnectionPool, fn: Callable[..., Awaitable[Any]], *args: Any,
               **kwargs: Any) -> Any:
    """Run one store function in its own transaction, as the server does."""
    async with pool.connection() as conn:
        return await fn(conn, *args, **kwargs)


async def new_citizen(pool: AsyncConnectionPool, name: str) -> str:
    citizen_id, secret = await call(pool, work.register, citizen_id=None, secret=None, name=name,
                                    platform="test", address="127.0.0.1:1")
    assert secret
    return citizen_id


async def lease(pool: AsyncConnectionPool, citizen_id: str, count: int = 1,
                **options: Any) -> list[p.Assignment]:
    """Lease as a server would; ``options`` as work.lease takes them (window, cap, pause...)."""
    return await call(pool, work.lease, citizen_id, count, **options)


async def submit(pool: AsyncConnectionPool, citizen_id: str, replica_id: int, output: Any = None,
                 *, exit_code: int | None = 0, error: str | None = None) -> tuple[bool, str]:
    result = p.Result(replica_id, exit_code, output=output, error=error, stderr_tail="tail",
                      elapsed=0.5)
    return await call(pool, assimilate.submit, citizen_id, result)


async def settle_all(url: str, output: Callable[[p.Assignment], Any] | None = None) -> None:
    """Drive every pending duty to done: two citizens lease everything and agree on ``output``."""
    output = output or (lambda a: alphabet_output(a.input))
    async with open_pool(url) as pool:
        citizens = [await new_citizen(pool, name) for name in ("settler-1", "settler-2")]
        for citizen in citizens:
            for assignment in await lease(pool, citizen, count=1000):
                accepted, what = await submit(pool, citizen, assignment.replica_id,
                                              output(assignment))
                assert accepted, what


@pytest.fixture
def h() -> SimpleNamespace:
    """The helpers above, for test modules (which should not import conftest)."""
    return SimpleNamespace(
        open_pool=open_pool, call=call, new_citizen=new_citizen, lease=lease, submit=submit,
        settle_all=settle_all, alphabet_output=alphabet_output, next_letter=next_letter,
        fetch=fetch, execute=execute, ALPHABET=ALPHABET, LETTERS=LETTERS)
