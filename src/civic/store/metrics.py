"""What /metrics reads of the database at a scrape (synchronous, like civic.store.monitor):
figures every server of the project shares, read in one snapshot so that they add up."""

from __future__ import annotations

from typing import Any

from psycopg import IsolationLevel
from psycopg.rows import dict_row

from civic.store import catalog
from civic.store.db import connect
from civic.store.queries import q
from civic.store.states import DutyState

STATES = tuple(str(s) for s in DutyState)  # every model reports every state, zeros included


def figures(url: str) -> dict[str, Any]:
    """``duties``: {model: {state: count}} for every model; ``citizens``: connected, resting,
    blocked and total."""
    with connect(url, row_factory=dict_row) as conn:
        conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
        duties: dict[str, dict[str, int]] = {
            row["model"]: dict.fromkeys(STATES, 0)
            for row in conn.execute(q("metrics_models")).fetchall()}
        for row in conn.execute(q("metrics_duties")).fetchall():
            duties[row["model"]][row["state"]] = int(row["duties"])
        citizens = conn.execute(q("metrics_citizens"),
                                {"seen_within": catalog.SEEN_WITHIN}).fetchone()
    return {"duties": duties, "citizens": {k: int(v) for k, v in citizens.items()}}
