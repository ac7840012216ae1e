"""Assimilation: store a replica's result and settle its duty when a quorum agrees."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Json

from civic.protocol import Result
from civic.server import quorum
from civic.store import q


def text(value: str, limit: int = 64 * 1024) -> str:
    """Text from the network as PostgreSQL can store it: bounded, and without NUL characters."""
    return value[:limit].replace("\x00", "\ufffd")


async def submit(conn: AsyncConnection, citizen_id: str, result: Result,
                 cooldown: float = 300.0) -> tuple[bool, str]:
    """Store one replica's result and settle its duty when a quorum agrees.

    Returns (accepted, what happened). Only the citizen holding the replica may submit, once.
    """
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(q("lock_replica"), {"replica_id": result.replica_id,
                                             "citizen_id": citizen_id})
    row = await cursor.fetchone()
    if row is None:
        return False, "no such replica was leased to this citizen"
    if row["state"] not in ("leased", "expired"):
        return False, "a result for this replica was already received"
    duty_id, pending = row["duty_id"], row["duty_state"] == "pending"

    if result.error is not None or result.exit_code != 0:
        error = text(result.error or f"exited with code {result.exit_code}")
        await conn.execute(q("store_error"), {"id": result.replica_id, "exit_code": result.exit_code,
                                              "error": error,
                                              "stderr_tail": text(result.stderr_tail),
                                              "elapsed": result.elapsed})
        if not pending:  # settled meanwhile: kept, charged to no one
            await conn.execute(q("mark_late"), {"id": result.replica_id})
            return True, f"duty {duty_id} was already {row['duty_state']}"
        await conn.execute(q("count_error"), {"id": citizen_id})
        if row["state"] == "leased" or not row["charged"]:
            # A leased replica's slot opens again; an expired one's is open already.
            await conn.execute(q("count_failures"), {"duty_id": duty_id, "error": error,
                                                     "slots": int(row["state"] == "leased")})
        return True, f"error: {error}" + await _cool_down(conn, [citizen_id], cooldown)

    tolerance = row["manifest"].get("tolerance")
    key = quorum.digest(result.output)
    if tolerance is not None:  # join the group of the first earlier output it agrees with
        await cursor.execute(q("returned_outputs"), {"duty_id": duty_id, "id": result.replica_id})
        for earlier in await cursor.fetchall():
            if quorum.agree(result.output, earlier["output"], tolerance):
                key = earlier["digest"]
                break
    await conn.execute(q("store_output"), {
        "id": result.replica_id, "exit_code": result.exit_code, "output": Json(result.output),
        "digest": key, "stderr_tail": text(result.stderr_tail), "elapsed": result.elapsed})
    if not pending:  # an honest citizen that was merely slow: kept as late, judged for no one
        await conn.execute(q("mark_late"), {"id": result.replica_id})
        return True, f"duty {duty_id} was already {row['duty_state']}"

    tally = [tuple(r) for r in await (await conn.execute(q("tally"), {
        "duty_id": duty_id, "distinct_by": row["distinct_by"]})).fetchall()]
    counts = await (await conn.execute(q("replica_counts"), {"duty_id": duty_id})).fetchone()
    verdict = quorum.decide(tally, quorum=row["quorum"], leased=counts[0],  # type: ignore[arg-type]
                            open_slots=row["open_slots"], spent=counts[1],
                            max_replicas=row["max_replicas"])
    if verdict.action == "settle":
        await conn.execute(q("settle_duty"), {"duty_id": duty_id, "replica_id": verdict.replica_id,
                                              "digest": verdict.digest})
        judged = [r[0] for r in await (await conn.execute(q("duty_citizens"),
                                                           {"duty_id": duty_id})).fetchall()]
        return True, f"duty {duty_id} done" + await _cool_down(conn, judged, cooldown)
    if verdict.action == "more":
        await conn.execute(q("open_slots"), {"duty_id": duty_id, "slots": verdict.slots})
        return True, f"duty {duty_id}: results disagree, {verdict.slots} more replica(s)"
    if verdict.action == "inconclusive":
        await conn.execute(q("inconclusive"), {"duty_id": duty_id})
        return True, f"duty {duty_id} inconclusive"
    return True, f"duty {duty_id}: waiting for more results"


COOLDOWN_WINDOW = 10  # a citizen is judged on its last ten judged replicas...
COOLDOWN_THRESHOLD = 5  # ...and rests when half of them disagreed or failed where others did not


async def _cool_down(conn: AsyncConnection, citizen_ids: list[str], seconds: float) -> str:
    """Put citizens that keep failing or disagreeing on a cool-down; says whom, for the log."""
    rested = await (await conn.execute(q("cool_down"), {
        "ids": citizen_ids, "seconds": seconds, "window": COOLDOWN_WINDOW,
        "threshold": COOLDOWN_THRESHOLD})).fetchall()
    return "".join(f"; citizen {name} rests {seconds:.0f}s (keeps failing or disagreeing)"
                   for _, name in rested)
