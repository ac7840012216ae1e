"""Named SQL queries, kept as data in ``sql/*.sql`` files other than the numbered migrations
(``queries.sql`` for the hot path, one file per topic beside it; one ``-- name:`` block each)."""

from __future__ import annotations

import re
from importlib import resources

from civic.store.db import MIGRATION

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sorted(resources.files("civic.store").joinpath("sql").iterdir(),
                        key=lambda e: e.name):
        if not entry.name.endswith(".sql") or MIGRATION.match(entry.name):
            continue
        parts = _NAME.split(entry.read_text())[1:]  # [name, body, name, body, ...]
        for name, body in zip(parts[::2], parts[1::2]):
            if name in found:
                raise RuntimeError(f"query {name} is defined twice (again in {entry.name})")
            found[name] = body.strip().rstrip(";")
    return found


QUERIES = _load()


def q(name: str) -> str:
    """Return the SQL of the named query."""
    return QUERIES[name]
