"""Drill 2: SIGKILL the server a third of the way into a 2,000-duty run, start it again on the
same port, and check that nothing accepted was lost, changed or counted twice."""

from __future__ import annotations

import time
from typing import Any

import pytest
from faultkit import Cluster, assert_unchanged_since, numbers, snapshot, square_model, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DUTIES = 2000
CITIZENS = 3


def test_server_sigkill_mid_run_loses_and_duplicates_nothing(cluster: Cluster,
                                                             figures: dict[str, Any]) -> None:
    model = square_model(cluster.root / "fast", "fast", extra="timeout: 5\n")
    assert cluster.url  # join the embedded PostgreSQL: it stays up while the server is dead
    cluster.start_server()
    cluster.add_model(model)
    dataset = cluster.import_dataset("fast", numbers(cluster.root / "n.json", DUTIES))
    assert dataset["duties"] == DUTIES
    ds = dataset["id"]
    max_replicas = cluster.sql("SELECT max_replicas, quorum FROM datasets WHERE id = %s", (ds,))[0]

    started = time.monotonic()
    spawn = cluster.spawn(CITIZENS, prefix="worker")
    wait_until(lambda: cluster.progress(ds)["done"] >= DUTIES // 3, 300,
               "a third of the duties to be done", 0.1)
    cluster.server.kill()  # SIGKILL: no drain, no goodbye, transactions in flight abort
    killed = time.monotonic()
    before = snapshot(cluster, ds)
    figures["done_at_kill"] = len(before[0])
    figures["leased_at_kill"] = cluster.sql(
        "SELECT count(*) AS n FROM replicas WHERE state = 'leased'")[0]["n"]
    assert spawn.alive, "the citizens must outlive the server"

    time.sleep(2)  # down for a moment: every citizen notices and starts retrying
    db_now = cluster.sql("SELECT now() AS t")[0]["t"]
    restarted = time.monotonic()
    cluster.start_server()
    listening = time.monotonic()
    wait_until(lambda: cluster.sql("SELECT count(*) AS n FROM replicas "
                                   "WHERE returned_at > %s", (db_now,))[0]["n"] > 0,
               120, "a first result after restart", 0.05)
    first_result = time.monotonic()
    final = cluster.wait_finished(ds, 300)
    finished = time.monotonic()
    figures.update(restart_to_listening_s=round(listening - restarted, 2),
                   restart_to_first_result_s=round(first_result - restarted, 2),
                   kill_to_first_result_s=round(first_result - killed, 2),
                   restart_to_all_done_s=round(finished - restarted, 2),
                   total_run_s=round(finished - started, 2))

    # zero lost: every duty done, nothing failed
    figures["lost"] = DUTIES - final["done"]
    assert final == {"total": DUTIES, "pending": 0, "done": DUTIES, "failed": 0,
                     "inconclusive": 0}, final

    assert_unchanged_since(cluster, ds, before)  # every result accepted before the kill

    # zero duplicated: one canonical replica per duty, valid, of that duty; never too many
    rows = cluster.sql("""
        SELECT u.id, u.canonical_replica_id AS crid, c.duty_id AS c_duty, c.state::text AS c_state,
               (SELECT count(*) FROM replicas r WHERE r.duty_id = u.id AND r.state = 'valid')
                   AS valid
        FROM duties u LEFT JOIN replicas c ON c.id = u.canonical_replica_id
        WHERE u.dataset_id = %s""", (ds,))
    bad = [r for r in rows if r["c_duty"] != r["id"] or r["c_state"] != "valid"]
    assert not bad, f"canonical replicas not valid replicas of their duty: {bad[:5]}"
    crids = [r["crid"] for r in rows]
    assert len(set(crids)) == len(crids) == DUTIES
    over = [r for r in rows if r["valid"] > max_replicas["max_replicas"]]
    assert not over, f"duties with more valid replicas than max_replicas: {over[:5]}"
    under = [r for r in rows if r["valid"] < max_replicas["quorum"]]
    assert not under, f"duties done below quorum: {under[:5]}"
    figures["duplicated"] = len(over)
    figures["duties_with_extra_valid_replicas"] = sum(r["valid"] > max_replicas["quorum"]
                                                      for r in rows)
    pairs = cluster.sql("SELECT duty_id, citizen_id, count(*) AS n FROM replicas "
                        "GROUP BY duty_id, citizen_id HAVING count(*) > 1")
    assert not pairs, pairs
    replica_states = cluster.sql("""SELECT r.state::text AS state, count(*) AS n FROM replicas r
                                    JOIN duties u ON u.id = r.duty_id WHERE u.dataset_id = %s
                                    GROUP BY 1 ORDER BY 1""", (ds,))
    figures["replicas"] = {r["state"]: r["n"] for r in replica_states}

    # the researcher's view: exactly one correct row per record
    exported = cluster.export("fast")
    assert len(exported) == DUTIES
    assert sorted(r["record"] for r in exported) == list(range(DUTIES))
    wrong = [r for r in exported if r["n"] != r["record"] or r["square"] != r["record"] ** 2]
    assert not wrong, wrong[:5]
    figures["exported_rows"] = len(exported)
