"""What an operator watches: the project's status (BOINC's server status page, as data) and one
duty with its replicas and why it waits (synchronous; the CLI, the console and the dashboard
render these).

Everything returned is JSON-ready (str, int, float, bool, None, lists and dicts; times as ISO
8601 text, ages in seconds measured by the database's clock), so a renderer needs no database
types and ``--json`` carries every figure a table shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import dict_row

from civic.errors import NotFound
from civic.protocol import size_text
from civic.store import catalog
from civic.store.audit import CONTROL
from civic.store.db import connect
from civic.store.queries import q
from civic.store.states import DutyState, ReplicaState

SEEN_WITHIN = catalog.SEEN_WITHIN  # seconds: a citizen silent longer is not counted connected
SERVER_SEEN_WITHIN = 15.0  # seconds: servers refresh their row every few seconds
ERROR_HOURS = 24  # the error breakdown's window
RETRY_PAUSE = 15.0  # seconds a citizen waits to retry a duty it failed (the leasing default)
AHEAD_LIMIT = 10_000  # duties ahead of a waiting one are counted up to this
WORK = "civic_work"  # NOTIFY channel: duties may be leased again
STATES = tuple(DutyState)  # pending, done, inconclusive, failed, cancelled


def status(url: str) -> dict[str, Any]:
    """The whole status page as one JSON-ready dict: ``at`` (the database's time), ``models``,
    ``datasets`` (duties by state, flags, done in the last minute and hour, rate, time left,
    oldest waiting duty, what waiting duties wait for), ``citizens`` (every one seen),
    ``people`` (citizens and volunteers connected, active in 24 h, resting, blocked),
    ``errors`` (model version × error class, last 24 h) and ``servers``."""
    with connect(url, row_factory=dict_row) as conn:
        # One snapshot for the whole page, so that its figures add up.
        conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
        now = conn.execute(q("monitor_now")).fetchone()["now"]
        every = {"id": None}
        datasets = conn.execute(q("monitor_datasets"), every).fetchall()
        finished = {r["dataset_id"]: r
                    for r in conn.execute(q("monitor_finished"), every).fetchall()}
        waiting_ids = [d["id"] for d in datasets if d["pending"]]
        oldest = {r["dataset_id"]: r for r in conn.execute(
            q("monitor_oldest_waiting"), {"ids": waiting_ids}).fetchall()} if waiting_ids else {}
        for d in datasets:
            add_progress(d, finished.get(d["id"]), oldest.get(d["id"]))
            # A paused or cancelled dataset waits for the operator, as its flags say.
            d["waiting"] = ([asdict(w) for w in catalog.waiting_on(conn, d["id"])]
                            if d["pending"] and not (d["paused"] or d["cancelled_at"]) else [])
        models = _models(conn.execute(q("monitor_models")).fetchall(), datasets)
        citizens = conn.execute(q("monitor_citizens"), {"seen_within": SEEN_WITHIN}).fetchall()
        volunteers = conn.execute(q("monitor_volunteers"),
                                  {"seen_within": SEEN_WITHIN}).fetchone()
        errors = conn.execute(q("monitor_errors"), {"hours": ERROR_HOURS}).fetchall()
        servers = conn.execute(q("monitor_servers"),
                               {"seen_within": SERVER_SEEN_WITHIN}).fetchall()
    people = {"citizens": {
        "total": len(citizens),
        "connected": sum(1 for c in citizens if c["connected_now"]),
        "active_24h": sum(1 for c in citizens if c["seen_ago"] < 86400),
        "resting": sum(1 for c in citizens if c["cooldown_until"] is not None),
        "blocked": sum(1 for c in citizens if c["blocked_at"] is not None),
    }, "volunteers": volunteers}
    return plain({"at": now, "models": models, "datasets": datasets, "citizens": citizens,
                  "people": people, "errors": errors, "servers": servers,
                  "error_hours": ERROR_HOURS})


def add_progress(d: dict[str, Any], finished: dict[str, Any] | None,
              oldest: dict[str, Any] | None) -> None:
    """Add a dataset's recent throughput, rate, time left and oldest waiting duty."""
    d["paused"] = d["paused_at"] is not None or d["model_paused_at"] is not None
    f = finished or {}
    for key in ("done_last_minute", "done_last_hour", "finished_last_minute",
                "finished_last_hour"):
        d[key] = f.get(key, 0)
    d["rate"] = _rate(f.get("finished_last_minute", 0), f.get("finished_last_hour", 0),
                      f.get("span"))
    d["eta_seconds"] = (0.0 if not d["pending"] else
                        d["pending"] / d["rate"] if d["rate"] and not d["paused"] else None)
    d["oldest_waiting_duty"] = oldest["duty_id"] if oldest else None
    d["oldest_waiting_seconds"] = oldest["age"] if oldest else None


def _rate(last_minute: int, last_hour: int, span: float | None) -> float | None:
    """Duties finished per second: over the last minute once the window holds a full minute of
    work, else over the part of the hour that had some (None without enough to tell)."""
    if not last_hour or span is None or span < 5:
        return None
    if span >= 60:
        return last_minute / 60.0 if last_minute else last_hour / span
    return last_hour / span


def _models(rows: list[dict[str, Any]], datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model version with datasets, or the latest of its name, with its datasets' figures
    summed (time left from the summed rate)."""
    latest = {r["name"]: r["version"] for r in rows}  # rows come in version order
    models = []
    for r in rows:
        mine = [d for d in datasets if d["model_id"] == r["id"]]
        if not mine and latest[r["name"]] != r["version"]:
            continue
        m = {"id": r["id"], "name": r["name"], "version": r["version"],
             "paused_at": r["paused_at"], "paused": r["paused_at"] is not None,
             "datasets": len(mine), "duties": sum(d["duties"] for d in mine)}
        for key in (*STATES, "done_last_minute", "done_last_hour", "finished_last_minute",
                    "finished_last_hour"):
            m[key] = sum(d[key] for d in mine)
        # The rate of its datasets still in progress (a finished one's recent rate would
        # make the time left look shorter), else of all of them.
        going = [d for d in mine if d["pending"] and not d["paused"] and not d["cancelled_at"]]
        rates = [d["rate"] for d in (going or mine) if d["rate"]]
        m["rate"] = sum(rates) if rates else None
        moving = sum(d["pending"] for d in going)
        m["eta_seconds"] = (0.0 if not m["pending"] else moving / m["rate"]
                            if moving and m["rate"] else None)
        m["waits_for_operator"] = bool(m["pending"]) and not moving  # paused or cancelled
        ages = [d["oldest_waiting_seconds"] for d in mine
                if d["oldest_waiting_seconds"] is not None]
        m["oldest_waiting_seconds"] = max(ages) if ages else None
        models.append(m)
    return models


# ---------------------------------------------------------------------------------------------
# One duty
# ---------------------------------------------------------------------------------------------

def duty(url: str, duty_id: int) -> dict[str, Any]:
    """A duty with its dataset and model, input, every replica, its canonical result and,
    while it is pending, ``waiting``: why no citizen takes it now (a list of ``kind`` and
    ``reason``; kinds: cancelled, dataset-paused, model-paused, draining, out, no-citizen,
    memory, build, platform, fit, resting, distinct, retry-pause, queued).

    Raises:
        NotFound: there is no such duty.
    """
    with connect(url, row_factory=dict_row) as conn:
        row = conn.execute(q("monitor_duty"), {"id": duty_id}).fetchone()
        if row is None:
            raise NotFound(f"no duty {duty_id}")
        row["replicas"] = conn.execute(q("monitor_duty_replicas"), {"id": duty_id}).fetchall()
        row["waiting"] = (_why(conn, row) if row["state"] == DutyState.PENDING else [])
    return plain(row)


def _why(conn: psycopg.Connection, d: dict[str, Any]) -> list[dict[str, Any]]:
    """Why a pending duty is not being computed now, most fundamental reason first."""
    reasons: list[dict[str, Any]] = []

    def say(kind: str, reason: str, **extra: Any) -> None:
        reasons.append({"kind": kind, "reason": reason, **extra})

    if d["dataset_cancelled_at"]:
        say("cancelled", f"dataset {d['dataset_id']} was cancelled")
    if d["dataset_paused_at"]:
        say("dataset-paused", f"dataset {d['dataset_id']} is paused (civic dataset resume "
                              f"{d['dataset_id']})")
    if d["model_paused_at"]:
        say("model-paused", f"model {d['model']} v{d['model_version']} is paused (civic model "
                            f"resume {d['model']})")
    servers = conn.execute(q("monitor_draining"), {"seen_within": SERVER_SEEN_WITHIN}).fetchone()
    if servers["live"] and servers["live"] == servers["draining"]:
        say("draining", f"every server on the database is draining ({servers['live']}): "
                        "nothing new is leased")
    out = [r for r in d["replicas"] if r["state"] == ReplicaState.LEASED]
    if out:
        say("out", f"{len(out)} replica(s) out, waiting for their results: "
                   + "; ".join(f"replica {r['id']} on {r['citizen']}, "
                               f"{'running' if r['started_at'] else 'not started'}, "
                               f"deadline in {_seconds(r['deadline_in'])}" for r in out),
            replicas=[{"id": r["id"], "citizen": r["citizen"], "deadline": r["deadline"],
                       "deadline_in": r["deadline_in"]} for r in out])
    if d["open_slots"] <= 0 or any(r["kind"] != "out" for r in reasons):
        return reasons  # nothing to lease, or nothing leased whoever is connected
    c = conn.execute(q("monitor_duty_candidates"), {
        "id": d["id"], "needs_memory": d["needs_memory"], "needs_build": d["needs_build"],
        "platforms": d["platforms"], "distinct_by": d["distinct_by"], "pause": RETRY_PAUSE,
        "seen_within": SEEN_WITHIN}).fetchone()
    slots = f"{d['open_slots']} more replica(s) wanted"
    if not c["connected"]:
        say("no-citizen", f"{slots}; no citizen is connected")
    elif not c["fit_memory"]:
        say("memory", f"{slots}; needs {_size(d['needs_memory'])} of memory and connected "
                      f"citizens have at most {_size(c['most_memory'])}")
    elif not c["fit_build"]:
        say("build", f"{slots}; needs a C compiler (the model has a build step) and no "
                     "connected citizen has one")
    elif not c["fit_platform"]:
        say("platform", f"{slots}; runs on {', '.join(d['platforms'])} only and no connected "
                        "citizen is on one of those")
    elif not c["fit"]:
        say("fit", f"{slots}; no connected citizen has enough memory, a C compiler and a "
                   "listed platform at once")
    elif not c["awake"]:
        say("resting", f"{slots}; every connected citizen that fits is resting ({c['resting']}, "
                       f"it kept failing or disagreeing) or blocked ({c['blocked']})",
            resting=c["resting"], blocked=c["blocked"])
    elif not c["distinct_ok"]:
        sources = {"citizen": "citizens", "host": "hosts", "volunteer": "volunteers"}[
            d["distinct_by"]]
        shares = ("" if d["distinct_by"] == "citizen" else
                  f" or shares its {d['distinct_by']} with one that did")
        say("distinct", f"{slots} from distinct {sources}; every connected citizen that fits "
                        f"already gave one{shares}")
    elif not c["ready"]:
        say("retry-pause", f"{slots}; the citizens that could take it failed it lately and may "
                           f"retry it in {_seconds(c['retry_in'])} (the pause after a failure)",
            retry_in=c["retry_in"])
    else:
        ahead = conn.execute(q("monitor_duty_ahead"),
                             {"id": d["id"], "limit": AHEAD_LIMIT}).fetchone()["ahead"]
        more = "+" if ahead >= AHEAD_LIMIT else ""
        say("queued", f"{slots}; {c['ready']} connected citizen(s) may take it, "
                      f"{ahead}{more} waiting duties are ahead of it", ahead=ahead,
            citizens=c["ready"])
    return reasons


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = max(0.0, value)
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.0f} min"


def _size(size: int | None) -> str:
    return size_text(size) if size else "unknown"


# ---------------------------------------------------------------------------------------------
# Watching
# ---------------------------------------------------------------------------------------------

@contextmanager
def changes(url: str) -> Iterator[Any]:
    """A waiter for the database's change signals: ``wait(timeout)`` returns when a control
    operation (``civic_control``) or new work (``civic_work``) was announced, or after
    ``timeout`` seconds, whichever comes first (the caller polls on timeout anyway)."""
    with connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CONTROL}")
        conn.execute(f"LISTEN {WORK}")

        def wait(timeout: float) -> bool:
            got = list(conn.notifies(timeout=timeout, stop_after=1))
            if got:  # a burst of signals is one change: take the rest without waiting
                list(conn.notifies(timeout=0.05, stop_after=1000))
            return bool(got)

        yield wait


# ---------------------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """``value`` with database types made JSON-ready: times as ISO text, UUIDs and enums as
    text, Decimals as numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, str):
        return str(value)  # StrEnum members become plain text
    return value
