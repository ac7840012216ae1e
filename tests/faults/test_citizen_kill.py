"""Drill 1: SIGKILL a citizen in the middle of a duty. Its replica must end 'expired', its duty
be leased again to another citizen, and the run complete with one correct result per duty."""

from __future__ import annotations

import time
from typing import Any

import pytest
from faultkit import Cluster, numbers, square_model, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DUTIES = 6


@pytest.mark.parametrize("replication", [1, 2])
def test_citizen_sigkilled_mid_duty(cluster: Cluster, figures: dict[str, Any],
                                    replication: int) -> None:
    model = square_model(cluster.root / "slow", "slow", sleep=2.0,
                         extra=f"replication: {replication}\ntimeout: 30\n")
    assert cluster.url
    cluster.start_server()
    cluster.add_model(model)
    ds = cluster.import_dataset("slow", numbers(cluster.root / "n.json", DUTIES))["id"]

    victim = cluster.agent("victim", DRILL_NAME="victim")
    honest = [cluster.agent(f"honest-{i}", DRILL_NAME=f"honest-{i}") for i in (1, 2)]
    started = time.monotonic()

    # the victim's model has started (its process is there) and sleeps: kill the citizen now
    wait_until(lambda: cluster.model_processes("victim"), 60, "the victim's model to start", 0.05)

    def victims() -> list[dict[str, Any]]:
        return cluster.sql("""SELECT r.id, r.duty_id, r.started_at IS NOT NULL AS running
                              FROM replicas r JOIN citizens c ON c.id = r.citizen_id
                              WHERE c.name = 'victim' AND r.state = 'leased'""")

    # prefetch 1: the duty it is computing (its heartbeat started it) and at most one leased
    # ahead (the model's 30 s timeout is shorter than the start window)
    held = wait_until(lambda: (lambda rows: rows if any(r["running"] for r in rows) else None)(
        victims()), 10, "the victim's running replica")
    assert len(held) <= 2 and sum(r["running"] for r in held) == 1, held
    time.sleep(0.3)
    victim.kill()
    killed = time.monotonic()
    replica, duty = next((r["id"], r["duty_id"]) for r in held if r["running"])

    expired = wait_until(lambda: cluster.sql(
        "SELECT state::text AS state, error FROM replicas WHERE id = %s AND state <> 'leased'",
        (replica,)), 30, "the victim's replica to be released")[0]
    released = time.monotonic()
    assert expired["state"] == "expired", expired
    assert "disconnected" in (expired["error"] or ""), expired
    wait_until(lambda: cluster.sql("SELECT 1 FROM replicas WHERE duty_id = %s AND id > %s",
                                   (duty, replica)), 60, "the duty to be leased again")
    reissued = time.monotonic()

    final = cluster.wait_finished(ds, 120)
    figures.update(replication=replication, kill_to_expired_s=round(released - killed, 2),
                   kill_to_reissued_s=round(reissued - killed, 2),
                   run_s=round(time.monotonic() - started, 2))
    assert final["done"] == DUTIES, final
    assert all(p.alive for p in honest), cluster.diagnostics()

    # the killed citizen's replica stays expired; its duty was computed by someone else
    after = cluster.sql("SELECT state::text AS state FROM replicas WHERE id = %s", (replica,))
    assert after[0]["state"] == "expired"
    victim_id = cluster.sql("SELECT id FROM citizens WHERE name = 'victim'")[0]["id"]
    done = cluster.sql("""SELECT u.id, u.first_record, u.canonical, u.canonical_replica_id,
                                 u.failures, c.duty_id AS c_duty, c.state::text AS c_state,
                                 c.citizen_id AS c_citizen,
                                 (SELECT count(*) FROM replicas r
                                   WHERE r.duty_id = u.id AND r.state = 'valid') AS valid
                          FROM duties u JOIN replicas c ON c.id = u.canonical_replica_id
                          WHERE u.dataset_id = %s ORDER BY u.id""", (ds,))
    assert len(done) == DUTIES
    for row in done:  # one canonical result per duty, right, from a valid replica of that duty
        n = row["first_record"]
        assert row["canonical"] == [{"n": n, "square": n * n}], row
        assert (row["c_duty"], row["c_state"]) == (row["id"], "valid"), row
        assert row["valid"] == replication, row  # computed exactly as often as asked
    killed_duty = next(r for r in done if r["id"] == duty)
    assert killed_duty["c_citizen"] != victim_id
    assert killed_duty["failures"] == 1, killed_duty  # the lost replica counted once
    assert len({r["canonical_replica_id"] for r in done}) == DUTIES

    exported = cluster.export("slow")
    assert sorted((r["record"], r["square"]) for r in exported) == [(n, n * n)
                                                                   for n in range(DUTIES)]
