"""Reading and writing the test database directly, for test modules anywhere under tests/ (a
module of its own: importing ``conftest`` finds whichever folder's conftest came first)."""

from __future__ import annotations

from typing import Any

import psycopg


def fetch(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def execute(url: str, query: str, params: Any = None) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(query, params)
