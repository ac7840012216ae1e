"""Operator control of work: pause, resume, cancel and remove datasets and models, and retry
duties (synchronous, like ``catalog``).

Each operation is one transaction with an audit row and a ``NOTIFY civic_control``
(``audit.record``); leasing reads the paused and cancelled flags afresh in every batch, so a
pause holds on every server of the database as soon as it commits. A no-op (pausing what is
paused) changes nothing, records nothing and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, dict_row

from civic.errors import NeedsConfirmation, NotFound, UsageError
from civic.store import audit
from civic.store.db import connect, transaction
from civic.store.queries import q
from civic.store.states import DutyState

RETRYABLE = (DutyState.FAILED, DutyState.INCONCLUSIVE, DutyState.CANCELLED)


@dataclass(frozen=True)
class Change:
    """What a pause, resume or cancel did (or found already done)."""

    action: str  # "pause" | "resume" | "cancel"
    target: str  # "dataset 3" | "model alphabet"
    changed: bool  # False: it was so already (nothing recorded)
    state: str  # running | paused | cancelled | finished, after the operation
    waiting: int  # pending duties
    out: int  # replicas out to citizens now (they finish and count, or come back late)
    done: int  # duties with a canonical result
    cancelled: int = 0  # duties cancelled now
    message: str = ""


@dataclass(frozen=True)
class Removal:
    """What a remove deleted (``removed``), or would delete once confirmed."""

    target: str
    removed: bool
    datasets: tuple[int, ...]
    versions: tuple[int, ...]  # the model versions removed (a model's remove)
    duties: int
    done: int  # duties with results: removing them needs a confirmation
    waiting: int  # pending duties (a model's: needs a confirmation too)
    out: int  # replicas out to citizens now: their results will be refused
    bundles: int = 0  # bundles deleted: no model uses them any more
    message: str = ""


@dataclass(frozen=True)
class RetryGroup:
    """Duties of one dataset that a retry re-queues."""

    dataset: int
    model: str
    model_version: int
    duties: int


@dataclass(frozen=True)
class RetryPlan:
    """The duties matching a retry's filter, counted at ``as_of``: what ``retry`` re-queues."""

    state: str
    dataset: int | None
    error: str | None
    as_of: datetime
    groups: tuple[RetryGroup, ...]
    duty: int | None = None  # this duty only
    exact: bool = False  # error is the whole error text, not a part of it

    @property
    def total(self) -> int:
        return sum(g.duties for g in self.groups)

    @property
    def description(self) -> str:
        what = f"{self.total} {self.state} dut{'y' if self.total == 1 else 'ies'}"
        if self.duty is not None:
            what += f" (duty {self.duty})"
        if self.error is not None:
            what += f" whose error {'is' if self.exact else 'contains'} {self.error!r}"
        return what


@dataclass(frozen=True)
class Retried:
    """What a retry re-queued, per dataset, and which of those datasets are paused."""

    plan: RetryPlan
    requeued: tuple[RetryGroup, ...]
    paused: tuple[int, ...]
    message: str = ""

    @property
    def total(self) -> int:
        return sum(g.duties for g in self.requeued)


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def _duties(n: int) -> str:
    return _plural(n, "duty", "duties")


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

def _lock_dataset(conn: Any, dataset_id: int) -> dict[str, Any]:
    row = conn.execute(q("lock_dataset"), {"id": dataset_id}).fetchone()
    if row is None:
        raise NotFound(f"no dataset {dataset_id}; see civic dataset list")
    return row


def _work(conn: Any, dataset_ids: Sequence[int]) -> dict[str, int]:
    return conn.execute(q("work_of_datasets"), {"ids": list(dataset_ids)}).fetchone()


def _state(work: dict[str, int], paused: bool, cancelled: bool) -> str:
    if cancelled:
        return "cancelled"
    if not work["waiting"]:
        return "finished"
    return "paused" if paused else "running"


def pause_dataset(url: str, dataset_id: int) -> Change:
    """Lease nothing more of this dataset, on every server; replicas out finish and count."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        row = _lock_dataset(conn, dataset_id)
        changed = conn.execute(q("pause_dataset"), {"id": dataset_id}).rowcount == 1
        work = _work(conn, [dataset_id])
        target = f"dataset {dataset_id}"
        if changed:
            audit.record(conn, "dataset pause", target, {"waiting": work["waiting"],
                                                         "out": work["out"]})
            message = (f"{target} paused: {_duties(work['waiting'])} wait; "
                       f"{_plural(work['out'], 'replica')} out will finish")
        else:
            message = f"{target} is already paused (since {row['paused_at']:%Y-%m-%d %H:%M:%S})"
        if row["cancelled_at"] is not None:
            message += " — it is cancelled, too"
        return Change("pause", target, changed,
                      _state(work, True, row["cancelled_at"] is not None), work["waiting"],
                      work["out"], work["done"], message=message)


def resume_dataset(url: str, dataset_id: int) -> Change:
    """Lease this dataset's duties again; citizens waiting for work are woken at once."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        row = _lock_dataset(conn, dataset_id)
        changed = conn.execute(q("resume_dataset"), {"id": dataset_id}).rowcount == 1
        work = _work(conn, [dataset_id])
        target = f"dataset {dataset_id}"
        if changed:
            conn.execute(q("announce_work"))  # parked requests on every server lease again
            audit.record(conn, "dataset resume", target, {"waiting": work["waiting"]})
            message = f"{target} resumed: {_duties(work['waiting'])} wait for citizens"
        else:
            message = f"{target} is not paused"
        if row["model_paused_at"] is not None:
            message += (f"; its model {row['model']} is paused: nothing is leased until "
                        f"civic model resume {row['model']}")
        if row["cancelled_at"] is not None:
            message += (f"; it is cancelled: civic duties retry --dataset {dataset_id} "
                        "--state cancelled computes its cancelled duties")
        held = row["model_paused_at"] is not None
        return Change("resume", target, changed,
                      _state(work, held, row["cancelled_at"] is not None), work["waiting"],
                      work["out"], work["done"], message=message)


def cancel_dataset(url: str, dataset_id: int) -> Change:
    """Give up a dataset's pending duties (they become cancelled); done duties keep their
    results, and results of replicas out now are kept as late, counted for nobody."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        row = _lock_dataset(conn, dataset_id)
        target = f"dataset {dataset_id}"
        work = _work(conn, [dataset_id])
        if row["cancelled_at"] is not None and not work["waiting"]:
            return Change("cancel", target, False, "cancelled", 0, work["out"], work["done"],
                          message=f"{target} is already cancelled")
        if not work["waiting"]:
            return Change("cancel", target, False, "finished", 0, work["out"], work["done"],
                          message=f"{target} has no pending duty: nothing to cancel")
        cancelled = conn.execute(q("cancel_dataset"), {
            "id": dataset_id, "reason": f"cancelled by {audit.actor()}"}).fetchone()["count"]
        audit.record(conn, "dataset cancel", target, {"cancelled": cancelled,
                                                      "done": work["done"], "out": work["out"]})
        message = (f"{target} cancelled: {_duties(cancelled)} cancelled, "
                   f"{work['done']} done keep their results")
        if work["out"]:
            message += (f"; {_plural(work['out'], 'replica')} out will come back as late "
                        "results, counted for nobody")
        return Change("cancel", target, True, "cancelled", 0, work["out"], work["done"],
                      cancelled, message)


def held(url: str, dataset_id: int) -> str | None:
    """Why the operator holds a dataset back (paused, its model paused, cancelled), or None."""
    with connect(url, row_factory=dict_row) as conn:
        row = conn.execute(q("dataset_held"), {"id": dataset_id}).fetchone()
    if row is None:
        raise NotFound(f"no dataset {dataset_id}; see civic dataset list")
    if row["cancelled"]:
        return f"dataset {dataset_id} is cancelled"
    if row["paused"]:
        return (f"dataset {dataset_id} is paused: its duties wait for "
                f"civic dataset resume {dataset_id}")
    if row["model_paused"]:
        return (f"model {row['model']} is paused: its duties wait for "
                f"civic model resume {row['model']}")
    return None


def remove_dataset(url: str, dataset_id: int, *, yes: bool = False) -> Removal:
    """Delete a dataset with its duties and replicas. When that deletes results (done duties)
    or work citizens are doing now, nothing happens unless ``yes``: NeedsConfirmation says
    what would be deleted."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        _lock_dataset(conn, dataset_id)
        work = _work(conn, [dataset_id])
        target = f"dataset {dataset_id}"
        plan = Removal(target, False, (dataset_id,), (), work["duties"], work["done"],
                       work["waiting"], work["out"])
        if (work["done"] or work["out"]) and not yes:
            raise NeedsConfirmation(_removal_question(plan), plan)
        conn.execute(q("delete_datasets"), {"ids": [dataset_id]})
        audit.record(conn, "dataset remove", target, {"duties": work["duties"],
                                                      "done": work["done"], "out": work["out"]})
    return Removal(target, True, (dataset_id,), (), work["duties"], work["done"],
                   work["waiting"], work["out"],
                   message=f"{target} removed: {_duties(work['duties'])} "
                           f"({work['done']} with results)")


def _removal_question(plan: Removal) -> str:
    """What removing would delete that someone may want: the results and the work under way."""
    parts = []
    if plan.done:
        parts.append(f"{_duties(plan.done)} with results")
    if plan.waiting and plan.versions:
        parts.append(f"{_duties(plan.waiting)} pending")
    if plan.out:
        parts.append(f"{_plural(plan.out, 'replica')} out to citizens now")
    where = ("" if not plan.versions else
             f" ({_plural(len(plan.versions), 'version')}, {_plural(len(plan.datasets), 'dataset')})")
    return f"{plan.target}{where} holds {' and '.join(parts)}: removing it deletes them"


# ---------------------------------------------------------------------------------------------
# Models (every version of one name)
# ---------------------------------------------------------------------------------------------

def _lock_model(conn: Any, name: str) -> list[dict[str, Any]]:
    rows = conn.execute(q("lock_model"), {"name": name}).fetchall()
    if not rows:
        raise NotFound(f"no model named {name!r}; see civic model list")
    return rows


def _model_datasets(conn: Any, versions: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in conn.execute(q("datasets_of_models"),
                                          {"ids": [v["id"] for v in versions]}).fetchall()]


def pause_model(url: str, name: str) -> Change:
    """Lease nothing more of any version of this model, on every server; replicas out finish
    and count."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        versions = _lock_model(conn, name)
        changed = conn.execute(q("pause_model"), {"name": name}).rowcount > 0
        datasets = _model_datasets(conn, versions)
        work = _work(conn, datasets)
        target = f"model {name}"
        if changed:
            audit.record(conn, "model pause", target, {"waiting": work["waiting"],
                                                       "out": work["out"]})
            message = (f"{target} paused ({_plural(len(versions), 'version')}): "
                       f"{_duties(work['waiting'])} wait in {_plural(len(datasets), 'dataset')}; "
                       f"{_plural(work['out'], 'replica')} out will finish")
        else:
            message = f"{target} is already paused"
        return Change("pause", target, changed, "paused", work["waiting"], work["out"],
                      work["done"], message=message)


def resume_model(url: str, name: str) -> Change:
    """Lease this model's duties again (datasets paused on their own stay paused)."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        versions = _lock_model(conn, name)
        changed = conn.execute(q("resume_model"), {"name": name}).rowcount > 0
        datasets = _model_datasets(conn, versions)
        work = _work(conn, datasets)
        target = f"model {name}"
        if changed:
            conn.execute(q("announce_work"))
            audit.record(conn, "model resume", target, {"waiting": work["waiting"]})
            message = f"{target} resumed: {_duties(work['waiting'])} wait for citizens"
        else:
            message = f"{target} is not paused"
        still = [r["id"] for r in conn.execute(q("paused_datasets"), {"ids": datasets})]
        if still:
            which = ", ".join(str(d) for d in still)
            message += (f"; dataset {which} stays paused (civic dataset resume {which})"
                        if len(still) == 1 else
                        f"; datasets {which} stay paused (civic dataset resume ID)")
        return Change("resume", target, changed, "running" if work["waiting"] else "idle",
                      work["waiting"], work["out"], work["done"], message=message)


def remove_model(url: str, name: str, *, yes: bool = False) -> Removal:
    """Delete every version of a model, their datasets (duties, replicas) and the bundles no
    other model uses. When that deletes results, pending duties or work citizens are doing
    now, nothing happens unless ``yes``: NeedsConfirmation says what would be deleted."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))  # as add_model
        versions = _lock_model(conn, name)
        datasets = _model_datasets(conn, versions)
        work = _work(conn, datasets)
        target = f"model {name}"
        numbers = tuple(v["version"] for v in versions)
        plan = Removal(target, False, tuple(datasets), numbers, work["duties"], work["done"],
                       work["waiting"], work["out"])
        if (work["done"] or work["waiting"] or work["out"]) and not yes:
            raise NeedsConfirmation(_removal_question(plan), plan)
        conn.execute(q("delete_datasets"), {"ids": datasets})
        shas = {r["bundle_sha256"] for r in conn.execute(
            q("delete_models"), {"ids": [v["id"] for v in versions]}).fetchall()}
        bundles = len(conn.execute(q("delete_unused_bundles"), {"shas": list(shas)}).fetchall())
        audit.record(conn, "model remove", target, {
            "versions": list(numbers), "datasets": datasets, "duties": work["duties"],
            "done": work["done"], "bundles": bundles})
    return Removal(target, True, tuple(datasets), numbers, work["duties"], work["done"],
                   work["waiting"], work["out"], bundles,
                   message=f"{target} removed: {_plural(len(numbers), 'version')}, "
                           f"{_plural(len(datasets), 'dataset')}, {_duties(work['duties'])} "
                           f"({work['done']} with results), {_plural(bundles, 'bundle')}")


# ---------------------------------------------------------------------------------------------
# Retrying duties
# ---------------------------------------------------------------------------------------------

def _retry_params(state: str, dataset: int | None, error: str | None, duty: int | None = None,
                  exact: bool = False) -> dict[str, Any]:
    if state not in RETRYABLE:
        raise UsageError(f"--state must be one of {', '.join(RETRYABLE)}, not {state!r}")
    return {"state": state, "dataset": dataset, "duty": duty, "exact": exact,
            "error": error if exact else error or None}


def plan_retry(url: str, *, state: str = DutyState.FAILED, dataset: int | None = None,
               error: str | None = None, duty: int | None = None,
               exact: bool = False) -> RetryPlan:
    """Count the duties a retry would re-queue: in ``state``, of ``dataset`` (any if None),
    ``duty`` only (any if None), whose error contains ``error`` (case-insensitive; any if
    None) — or, with ``exact``, is ``error`` (a duty without an error has the error "")."""
    params = _retry_params(state, dataset, error, duty, exact)
    with connect(url, row_factory=dict_row) as conn:
        if dataset is not None and conn.execute("SELECT 1 FROM datasets WHERE id = %s",
                                                (dataset,)).fetchone() is None:
            raise NotFound(f"no dataset {dataset}; see civic dataset list")
        as_of = conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
        conn.row_factory = class_row(RetryGroup)
        groups = conn.execute(q("retry_candidates"), params | {"as_of": as_of}).fetchall()
    return RetryPlan(DutyState(state).value, dataset, params["error"], as_of, tuple(groups),
                     duty, exact)


def plan_duty_retry(url: str, duty_id: int) -> RetryPlan:
    """``plan_retry`` of one duty, which must be failed, inconclusive or cancelled."""
    with connect(url) as conn:
        row = conn.execute(q("duty_retryable"), {"id": duty_id}).fetchone()
    if row is None:
        raise NotFound(f"no duty {duty_id}")
    if row[0] not in RETRYABLE:
        raise UsageError(f"duty {duty_id} is {row[0]}: only {', '.join(RETRYABLE)} duties are "
                         "retried")
    return plan_retry(url, state=row[0], dataset=row[1], duty=duty_id)


def retry_duty(url: str, duty_id: int) -> Retried:
    """Re-queue one failed, inconclusive or cancelled duty with fresh attempts."""
    return retry(url, plan_duty_retry(url, duty_id))


def retry(url: str, plan: RetryPlan) -> Retried:
    """Re-queue the duties ``plan`` counted (those finished since are left alone) with fresh
    attempts, and wake the citizens waiting for work, in one transaction."""
    params = _retry_params(plan.state, plan.dataset, plan.error, plan.duty, plan.exact) | {
        "as_of": plan.as_of}
    models = {g.dataset: g for g in plan.groups}
    with transaction(url) as conn:
        rows = conn.execute(q("retry_duties"), params).fetchall()
        requeued = tuple(RetryGroup(d, models[d].model if d in models else "?",
                                    models[d].model_version if d in models else 0, n)
                         for d, n in rows)
        paused: tuple[int, ...] = ()
        if requeued:
            ids = [g.dataset for g in requeued]
            paused = tuple(r[0] for r in conn.execute(q("held_datasets"), {"ids": ids}))
            conn.execute(q("announce_work"))
            audit.record(conn, "duties retry",
                         f"duty {plan.duty}" if plan.duty is not None else
                         f"dataset {plan.dataset}" if plan.dataset is not None else "duties",
                         {"state": plan.state, "error": plan.error,
                          "duties": {str(g.dataset): g.duties for g in requeued}})
    total = sum(g.duties for g in requeued)
    message = f"re-queued {_duties(total)} ({plan.state})"
    if requeued:
        message += ": " + ", ".join(f"{g.duties} of dataset {g.dataset}" for g in requeued)
    if paused:
        message += ("; paused, so they wait until resumed: "
                    + ", ".join(f"dataset {d}" for d in paused))
    return Retried(plan, requeued, paused, message)
