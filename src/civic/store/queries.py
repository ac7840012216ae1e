"""Named SQL queries, kept as data in ``sql/queries.sql`` (one ``-- name:`` block each)."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load() -> dict[str, str]:
    text = resources.files("civic.store").joinpath("sql/queries.sql").read_text()
    parts = _NAME.split(text)[1:]  # [name, body, name, body, ...]
    return {name: body.strip().rstrip(";") for name, body in zip(parts[::2], parts[1::2])}


QUERIES = _load()


def q(name: str) -> str:
    """Return the SQL of the named query."""
    return QUERIES[name]
