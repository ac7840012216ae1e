"""Assimilation: store replicas' results and settle their duties when a quorum agrees.

Set-based: a batch of results from any number of citizens costs a fixed handful of statements
(lock, store, count failures, tally, settle), whatever its size.
"""

from __future__ import annotations

import collections
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from civic.protocol import Result
from civic.server import quorum
from civic.store import q
from civic.store.states import DutyState, ReplicaState

COOLDOWN_WINDOW = 10  # a citizen is judged on its last ten judgements...
COOLDOWN_THRESHOLD = 5  # ...and rests when half of them disagreed or failed where others did not


def text(value: str, limit: int = 64 * 1024) -> str:
    """Text from the network as PostgreSQL can store it: bounded, and without NUL characters."""
    return value[:limit].replace("\x00", "\ufffd")


@dataclass
class Outcome:
    """What a batch did, beyond each result's answer: for the server's log and wake-ups."""

    answers: list[tuple[bool, str]] = field(default_factory=list)
    settled: int = 0
    reopened: int = 0  # slots opened again (errors, disagreement): idle citizens may lease them
    rested: list[str] = field(default_factory=list)  # citizens put on a cool-down
    verdicts: dict[int, str] = field(default_factory=dict)  # duty → what became of it
    # (model name, outcome) → replicas that got it here: error, late, valid, invalid
    replicas: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


async def submit(conn: AsyncConnection, citizen_id: str, result: Result,
                 cooldown: float = 300.0) -> tuple[bool, str]:
    """Store one replica's result; see ``submit_many``."""
    return (await submit_many(conn, [(citizen_id, result)], cooldown)).answers[0]


async def submit_many(conn: AsyncConnection, results: Sequence[tuple[str, Result]],
                      cooldown: float = 300.0) -> Outcome:
    """Store results (citizen id, result) and settle the duties whose quorum now agrees.

    Each answer is (accepted, what happened), in the order given. Only the citizen holding a
    replica may submit for it, once. Call inside one transaction; in pipeline mode, the
    statements that need no answer travel together.
    """
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(q("lock_replicas"), {"ids": [r.replica_id for _, r in results],
                                              "citizen_ids": [c for c, _ in results]})
    rows = {row["id"]: row for row in await cursor.fetchall()}
    outcome, store = Outcome(), _Store()
    tolerant = await _earlier_outputs(conn, [row for row in rows.values()
                                             if row["tolerance"] is not None])
    judged: list[tuple[int, int]] = []  # (answer, duty) of each output to tell the verdict of
    for citizen_id, result in results:
        row = rows.get(result.replica_id)
        if row is None or row["citizen_id"] != citizen_id:
            outcome.answers.append((False, "no such replica was leased to this citizen"))
        elif row["state"] not in (ReplicaState.LEASED, ReplicaState.EXPIRED) or result.replica_id in store.ids:
            outcome.answers.append((False, "a result for this replica was already received"))
        else:
            try:
                what, judge = store.add(row, result, tolerant)
            except UnicodeEncodeError as exc:  # a lone surrogate, sent as a JSON escape
                outcome.answers.append((False, f"result cannot be stored: {exc}"))
                continue
            if judge:
                judged.append((len(outcome.answers), row["duty_id"]))
            elif row["duty_state"] != DutyState.PENDING:
                outcome.replicas[row["model"], "late"] += 1
            else:
                outcome.replicas[row["model"], "error"] += 1
            outcome.answers.append((True, what))
    if not store.ids:
        return outcome
    await conn.execute(q("store_results"), store.columns())
    if store.errors:
        ids, counts = zip(*store.errors.items())
        await conn.execute(q("count_errors"), {"ids": list(ids), "counts": list(counts)})
    if store.failures:
        duty_ids = list(store.failures)
        await conn.execute(q("count_failures"), {
            "duty_ids": duty_ids, "failed": [store.failures[d][0] for d in duty_ids],
            "slots": [store.failures[d][1] for d in duty_ids],
            "errors": [store.failures[d][2] for d in duty_ids]})
        outcome.reopened += sum(slots for _, slots, _ in store.failures.values())
    if store.judge:
        models = {row["duty_id"]: row["model"] for row in rows.values()}
        await _judge(conn, sorted(store.judge), cooldown, outcome, models)
    for i, duty_id in judged:
        outcome.answers[i] = (True, outcome.verdicts.get(duty_id, outcome.answers[i][1]))
    return outcome


class _Store:
    """The accepted results of a batch, as the columns of one ``store_results`` statement,
    and what they do to their duties' failure counts and their citizens' error counts."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.rows: dict[str, list[Any]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)  # citizen → errors
        self.failures: dict[int, list[Any]] = {}  # duty → [failed, slots, last error]
        self.judge: set[int] = set()  # duties with a new output to tally

    def add(self, row: dict[str, Any], result: Result,
            tolerant: dict[int, list[tuple[str, Any]]]) -> tuple[str, bool]:
        """Take one result; says what happened and whether its duty is to be judged."""
        duty_id, pending = row["duty_id"], row["duty_state"] == DutyState.PENDING
        failed = result.error is not None or result.exit_code != 0
        error = text(result.error or f"exited with code {result.exit_code}") if failed else None
        digest = output = None
        if not failed:
            digest = _digest(result.output, row["tolerance"], tolerant.get(duty_id))
            output = json.dumps(result.output)
        self.ids.append(result.replica_id)
        for column, value in (("exit_code", result.exit_code), ("output", output),
                              ("digest", digest), ("error", error),
                              ("stderr_tail", text(result.stderr_tail)),
                              ("elapsed", result.elapsed), ("late", not pending)):
            self.rows[column].append(value)
        if not pending:  # settled meanwhile: kept as late, judged for no one
            return f"duty {duty_id} was already {row['duty_state']}", False
        if not failed:
            self.judge.add(duty_id)
            return f"duty {duty_id}: waiting for more results", True
        self.errors[row["citizen_id"]] += 1
        if row["state"] == ReplicaState.LEASED or not row["charged"]:
            # A leased replica's slot opens again; an expired one's is open already.
            count = self.failures.setdefault(duty_id, [0, 0, error])
            count[0] += 1
            count[1] += int(row["state"] == ReplicaState.LEASED)
            count[2] = error
        return f"error: {error}", False

    def columns(self) -> dict[str, list[Any]]:
        return {"ids": self.ids, **self.rows}


def _digest(output: Any, tolerance: float | None, earlier: list[tuple[str, Any]] | None) -> str:
    """The output's group: its own digest, or, with a tolerance, that of the first earlier
    output it agrees with (earlier in the database or in this batch)."""
    key = quorum.digest(output)
    if tolerance is None:
        return key
    for digest, other in earlier or ():
        if quorum.agree(output, other, tolerance):
            return digest
    if earlier is not None:
        earlier.append((key, output))
    return key


async def _earlier_outputs(conn: AsyncConnection, rows: list[dict[str, Any]]
                           ) -> dict[int, list[tuple[str, Any]]]:
    """For duties compared with a tolerance: the outputs already returned, one per group."""
    earlier: dict[int, list[tuple[str, Any]]] = {row["duty_id"]: [] for row in rows}
    if earlier:
        cursor = await conn.execute(q("returned_outputs"), {"duty_ids": list(earlier)})
        for duty_id, digest, output in await cursor.fetchall():
            earlier[duty_id].append((digest, output))
    return earlier


async def _judge(conn: AsyncConnection, duty_ids: list[int], cooldown: float,
                 outcome: Outcome, models: dict[int, str]) -> None:
    """Tally the duties that got outputs and settle, widen or give up on each (``models``:
    each duty's model name, for the outcome's counts)."""
    cursor, counts = conn.cursor(row_factory=dict_row), conn.cursor(row_factory=dict_row)
    await cursor.execute(q("tally"), {"duty_ids": duty_ids})
    await counts.execute(q("replica_counts"), {"duty_ids": duty_ids})  # one round trip, piped
    tallies: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    groups: dict[tuple[int, str], list[int]] = {}  # the replicas of each group
    for row in await cursor.fetchall():
        tallies[row["duty_id"]].append((row["digest"], row["votes"], row["first_replica"]))
        groups[row["duty_id"], row["digest"]] = row["replicas"]
    settle: list[int] = []
    canonical: list[int] = []  # the replica whose output each settled duty keeps
    valid: list[int] = []  # replicas that agree with their duty's canonical result
    invalid: list[int] = []
    more: dict[int, int] = {}
    inconclusive: list[int] = []
    verdicts = outcome.verdicts
    for row in await counts.fetchall():
        if row["state"] != DutyState.PENDING:
            continue  # failed in this very batch
        duty_id = row["duty_id"]
        verdict = quorum.decide(tallies[duty_id], quorum=row["quorum"], leased=row["leased"],
                                open_slots=row["open_slots"], spent=row["spent"],
                                max_replicas=row["max_replicas"])
        if verdict.action == "settle":
            settle.append(duty_id)
            canonical.append(verdict.replica_id)  # type: ignore[arg-type]
            for digest, _, _ in tallies[duty_id]:
                agree = digest == verdict.digest
                (valid if agree else invalid).extend(groups[duty_id, digest])
                outcome.replicas[models[duty_id], "valid" if agree else "invalid"] += len(
                    groups[duty_id, digest])
            verdicts[duty_id] = f"duty {duty_id} done"
        elif verdict.action == "more":
            more[duty_id] = verdict.slots
            verdicts[duty_id] = f"duty {duty_id}: results disagree, {verdict.slots} more replica(s)"
        elif verdict.action == "inconclusive":
            inconclusive.append(duty_id)
            verdicts[duty_id] = f"duty {duty_id} inconclusive"
    if settle:
        rested = await (await conn.execute(q("settle_duties"), {
            "duty_ids": settle, "canonical": canonical, "valid": valid, "invalid": invalid,
            "seconds": cooldown, "window": COOLDOWN_WINDOW,
            "threshold": COOLDOWN_THRESHOLD})).fetchall()
        outcome.settled += len(settle)
        outcome.rested += [name for (name,) in rested]
        for duty_id in settle:
            verdicts[duty_id] += "".join(f"; citizen {name} rests {cooldown:.0f}s (keeps failing "
                                         "or disagreeing)" for (name,) in rested)
    if more:
        await conn.execute(q("open_slots"), {"duty_ids": list(more), "slots": list(more.values())})
        outcome.reopened += sum(more.values())
    if inconclusive:
        await conn.execute(q("inconclusive"), {"duty_ids": inconclusive})
