"""PostgreSQL, reached only through this package (psycopg 3). SQL lives in ``sql/``."""

from __future__ import annotations

from civic.store.db import connect, embedded_url, migrate, redact, transaction
from civic.store.queries import q

__all__ = ["connect", "embedded_url", "migrate", "q", "redact", "transaction"]
