"""What the dashboard's read pages show beyond the status page: one dataset, one duty cut to a
page's size, citizens and volunteers, and failures grouped by error (synchronous, JSON-ready
like ``civic.store.monitor``).

Every read is bounded: a page of citizens or volunteers, the latest failures, the first
kilobytes of an input or an output. Only the dataset page counts every duty of its dataset by
state, from duties_by_dataset alone, as the status page does for all of them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from typing import Any

from psycopg import IsolationLevel
from psycopg.rows import dict_row

from civic.errors import NotFound, UsageError
from civic.store import catalog, monitor
from civic.store.db import connect
from civic.store.queries import q

PREVIEW = 4096  # characters of an input, an output or a stderr tail a page shows
ERROR_CHARS = 2000  # characters of an error text a page shows (a retry matches the prefix)
DATASET_FAILURES = 20  # a dataset page's latest failed or inconclusive duties
FAILURE_SCAN = 10_000  # the failures page groups the latest this many failed duties
FAILURE_GROUPS = 50  # ... and shows the most frequent this many groups
CITIZEN_LIMIT = 200  # citizens a page shows unless ?limit= says otherwise
LIMIT_MAX = 5000  # the most ?limit= may ask
CITIZEN_REPLICAS = 30  # a citizen page's latest replicas
REPLICA_WINDOW = 100_000  # ... looked for among the latest this many replicas of all


def dataset(url: str, dataset_id: int) -> dict[str, Any]:
    """One dataset as ``monitor.status`` shows each (duties by state, flags, recent work, rate,
    time left, oldest waiting duty, ``waiting``), with ``out`` (replicas out to citizens now)
    and ``failures`` (its latest failed or inconclusive duties).

    Raises:
        NotFound: there is no such dataset.
    """
    with connect(url, row_factory=dict_row) as conn:
        conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
        d = conn.execute(q("monitor_datasets"), {"id": dataset_id}).fetchone()
        if d is None:
            raise NotFound(f"no dataset {dataset_id}")
        d["at"] = conn.execute(q("monitor_now")).fetchone()["now"]
        finished = conn.execute(q("monitor_finished"), {"id": dataset_id}).fetchone()
        oldest = (conn.execute(q("monitor_oldest_waiting"), {"ids": [dataset_id]}).fetchone()
                  if d["pending"] else None)
        monitor.add_progress(d, finished, oldest)  # the status page's figures, for one dataset
        d["waiting"] = ([asdict(w) for w in catalog.waiting_on(conn, dataset_id)]
                        if d["pending"] and not (d["paused"] or d["cancelled_at"]) else [])
        d["out"] = conn.execute(q("web_dataset_out"), {"id": dataset_id}).fetchone()["out"]
        d["failures"] = [_error_cut(f) for f in conn.execute(
            q("web_dataset_failures"), {"id": dataset_id, "limit": DATASET_FAILURES,
                                        "error_chars": ERROR_CHARS})]
    d["states"] = {s: d[s] for s in monitor.STATES}
    return monitor.plain(d)


def duty(url: str, duty_id: int) -> dict[str, Any]:
    """``monitor.duty`` cut to a page's size: the input, the canonical result and each
    replica's output as the first PREVIEW characters of their JSON (``*_preview``, with
    ``*_chars`` their whole length), stderr tails to their last PREVIEW characters, errors to
    ERROR_CHARS; ``records`` counts the input's records.

    Raises:
        NotFound: there is no such duty.
    """
    d = monitor.duty(url, duty_id)
    value = d.pop("input")
    d["records"] = len(value) if isinstance(value, list) else 1
    d["input_preview"], d["input_chars"] = _preview(value)
    value = d.pop("canonical")
    d["canonical_preview"], d["canonical_chars"] = (
        _preview(value) if d["canonical_replica_id"] is not None else (None, 0))
    _error_cut(d)
    for r in d["replicas"]:
        value = r.pop("output")
        r["output_preview"], r["output_chars"] = (
            _preview(value) if value is not None else (None, 0))
        tail = r["stderr_tail"] or ""
        r["stderr_chars"] = len(tail)
        r["stderr_tail"] = tail[-PREVIEW:]
        _error_cut(r)
    d["preview"] = PREVIEW
    return d


def _preview(value: Any) -> tuple[str, int]:
    text = json.dumps(value, ensure_ascii=False)
    return text[:PREVIEW], len(text)


def _error_cut(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its error cut to ERROR_CHARS (``error_chars``: the whole length;
    ``error_cut``: it was cut)."""
    error = row.get("error")
    row.setdefault("error_chars", len(error) if error else 0)
    if error and len(error) > ERROR_CHARS:
        row["error"] = error = error[:ERROR_CHARS]
    row["error_cut"] = bool(error) and row["error_chars"] > len(error)
    return row


def limit(text: str | None, default: int = CITIZEN_LIMIT) -> int:
    """A page's ``?limit=``: a whole number from 1 to LIMIT_MAX."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"limit must be a whole number, not {text[:40]!r}") from None
    if not 1 <= value <= LIMIT_MAX:
        raise UsageError(f"limit must be from 1 to {LIMIT_MAX}, not {value}")
    return value


def citizens(url: str, limit: int = CITIZEN_LIMIT) -> dict[str, Any]:
    """The ``limit`` citizens of the latest contact (``citizens``, each as the status page
    shows it, plus ``share``: its part of all results that counted), and ``total``."""
    with connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(q("web_citizens"), {"seen_within": monitor.SEEN_WITHIN,
                                                "who": None, "limit": limit}).fetchall()
        total = rows[0]["total"] if rows else conn.execute(
            "SELECT count(*) AS n FROM citizens").fetchone()["n"]
    return monitor.plain({"citizens": [_citizen_row(r) for r in rows], "total": total,
                          "limit": limit})


def _citizen_row(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("total", None)
    everyone = row.pop("all_valid", 0) or 0
    row["share"] = round(row["valid_count"] / everyone, 4) if everyone else 0.0
    row["resting"] = row["cooldown_until"] is not None
    row["blocked"] = row["blocked_at"] is not None
    return row


def citizen(url: str, who: str) -> dict[str, Any]:
    """One citizen, by name, id or a prefix of its id (``citizen``, as ``citizens`` shows each)
    and its latest replicas (``replicas``: those it holds, and those among the latest
    REPLICA_WINDOW replicas of all).

    Raises:
        NotFound: no citizen is so named or numbered.
        UsageError: several are (their ids are listed).
    """
    try:
        as_id: str | None = str(uuid.UUID(who))
    except ValueError:
        as_id = None
    prefix = who.lower() if as_id is None and 4 <= len(who) < 36 and all(
        ch in "0123456789abcdef-" for ch in who.lower()) else None
    with connect(url, row_factory=dict_row) as conn:
        conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
        ids = [r["id"] for r in conn.execute(q("web_citizen_named"), {
            "name": who, "id": as_id, "prefix": prefix})]
        if not ids:
            raise NotFound(f"no citizen named or numbered {who!r}")
        if len(ids) > 1:
            raise UsageError(f"{'more than 5' if len(ids) > 5 else len(ids)} citizens match "
                             f"{who!r}: give its id ({', '.join(ids[:5])})")
        row = conn.execute(q("web_citizens"), {"seen_within": monitor.SEEN_WITHIN,
                                               "who": ids, "limit": 1}).fetchone()
        replicas = conn.execute(q("web_citizen_replicas"), {
            "id": ids[0], "window": REPLICA_WINDOW, "limit": CITIZEN_REPLICAS}).fetchall()
    return monitor.plain({"citizen": _citizen_row(row),
                          "replicas": [_error_cut(r) for r in replicas],
                          "replica_window": REPLICA_WINDOW})


def volunteers(url: str, limit: int = CITIZEN_LIMIT) -> dict[str, Any]:
    """Volunteers (``volunteers``, those with the latest contact first, removed ones last) with
    their citizens' totals as ``civic volunteer list --json`` shows them, plus their last
    contact, resting and blocked citizens and ``share`` of the results that counted; and
    ``total``."""
    with connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(q("web_volunteers"), {"seen_within": monitor.SEEN_WITHIN,
                                                  "limit": limit}).fetchall()
    total = rows[0]["total"] if rows else 0
    for r in rows:
        r.pop("total")
        everyone = r.pop("all_valid") or 0
        r["share"] = round(r["valid"] / everyone, 4) if everyone else 0.0
    return monitor.plain({"volunteers": rows, "total": total, "limit": limit})


def failures(url: str) -> dict[str, Any]:
    """Failed and inconclusive duties grouped by model version, dataset, state and error
    (``groups``: ``count``, ``last_at``, ``example`` duty), the most frequent FAILURE_GROUPS
    groups of the latest FAILURE_SCAN such duties (``scanned``: how many were grouped;
    ``capped``: there may be more)."""
    with connect(url, row_factory=dict_row) as conn:
        groups = conn.execute(q("web_failures"), {
            "scan": FAILURE_SCAN, "limit": FAILURE_GROUPS, "error_chars": ERROR_CHARS}).fetchall()
    scanned = groups[0]["scanned"] if groups else 0
    for g in groups:
        del g["scanned"]
    return monitor.plain({"groups": [_error_cut(g) for g in groups], "scanned": scanned,
                          "capped": scanned >= FAILURE_SCAN, "scan": FAILURE_SCAN,
                          "shown": FAILURE_GROUPS})
