"""Drill 3: restart PostgreSQL (the embedded one, `pg_ctl restart -m fast`) in the middle of a
run. Server and citizens must find it again on their own; nothing may be lost."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from faultkit import (Cluster, numbers, pg_ctl, postmaster, restart_embedded_postgres, square_model,
                      start_embedded_postgres, wait_until)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DUTIES = 600
# seconds PostgreSQL stays down in the "outage" variant
OUTAGE = float(os.environ.get("CIVIC_DRILL_PG_OUTAGE", "8"))


@pytest.mark.parametrize("how", ["restart", "outage"])
def test_postgres_restart_mid_run(cluster: Cluster, figures: dict[str, Any], how: str) -> None:
    model = square_model(cluster.root / "pg", "pg", extra="timeout: 5\n")
    pgdata = cluster.home / "postgres"
    assert cluster.url
    cluster.start_server()
    cluster.add_model(model)
    ds = cluster.import_dataset("pg", numbers(cluster.root / "n.json", DUTIES))["id"]

    started = time.monotonic()
    spawn = cluster.spawn(3, prefix="steady")
    wait_until(lambda: cluster.progress(ds)["done"] >= DUTIES // 4, 180,
               "a quarter of the duties to be done", 0.1)
    before = {r["id"]: (r["canonical_replica_id"], r["canonical"]) for r in cluster.sql(
        "SELECT id, canonical_replica_id, canonical FROM duties "
        "WHERE dataset_id = %s AND state = 'done'", (ds,))}
    info = postmaster(pgdata)
    assert info is not None

    t0 = time.monotonic()
    if how == "restart":  # pg_ctl restart -m fast: down for a fraction of a second
        done = restart_embedded_postgres(pgdata)
        assert done.returncode == 0, done.stdout + done.stderr
    else:  # a real outage: stopped, down for OUTAGE seconds, started again
        done = pg_ctl(pgdata, "-w", "stop", "-m", "fast")
        assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(OUTAGE)
        assert cluster.server is not None and cluster.server.alive, cluster.diagnostics()
        done = start_embedded_postgres(pgdata, info["socket_dir"])
        assert done.returncode == 0, done.stdout + done.stderr
    restarted = time.monotonic()
    assert postmaster(pgdata)["pid"] != info["pid"]  # type: ignore[index]
    db_now = cluster.sql("SELECT now() AS t")[0]["t"]
    # the CLI right after the restart (a retry or two allowed)
    _, tries = cluster.cli_json_tries("status", attempts=5, pause=2)
    figures["cli_tries_after_restart"] = tries
    wait_until(lambda: cluster.sql("SELECT count(*) AS n FROM replicas WHERE returned_at > %s",
                                   (db_now,))[0]["n"] > 0, 120, "a first result after the restart",
               0.05)
    first_result = time.monotonic()
    final = cluster.wait_finished(ds, 240)
    finished = time.monotonic()
    # the CLI works again (a retry or two allowed right after the restart)
    status = cluster.cli_json("status", attempts=5, pause=2)
    figures.update(done_before_restart=len(before), pg_down_s=round(restarted - t0, 2),
                   restart_to_first_result_s=round(first_result - restarted, 2),
                   restart_to_all_done_s=round(finished - restarted, 2),
                   total_run_s=round(finished - started, 2), lost=DUTIES - final["done"])
    assert final == {"total": DUTIES, "pending": 0, "done": DUTIES, "failed": 0,
                     "inconclusive": 0}, final
    assert first_result - restarted < 30, "no result within 30 s of PostgreSQL being back"
    assert cluster.server is not None and cluster.server.alive, cluster.diagnostics()
    assert spawn.alive, cluster.diagnostics()

    after = {r["id"]: (r["canonical_replica_id"], r["canonical"]) for r in cluster.sql(
        "SELECT id, canonical_replica_id, canonical FROM duties WHERE dataset_id = %s", (ds,))}
    changed = [d for d, v in before.items() if after[d] != v]
    assert not changed, f"results accepted before the restart changed: {changed[:5]}"
    rows = cluster.sql("""SELECT u.id, u.first_record, u.canonical, c.duty_id AS c_duty,
                                 c.state::text AS c_state
                          FROM duties u JOIN replicas c ON c.id = u.canonical_replica_id
                          WHERE u.dataset_id = %s""", (ds,))
    assert len(rows) == DUTIES
    assert all(r["c_duty"] == r["id"] and r["c_state"] == "valid" for r in rows)
    assert all(r["canonical"] == [{"n": r["first_record"], "square": r["first_record"] ** 2}]
               for r in rows)
    row = next(d for d in status["datasets"] if d["id"] == ds)
    assert (row["done"], row["pending"]) == (DUTIES, 0)
    lost = cluster.sql("""SELECT r.state::text AS state, count(*) AS n FROM replicas r
                          JOIN duties u ON u.id = r.duty_id WHERE u.dataset_id = %s
                          GROUP BY 1""", (ds,))
    figures["replicas"] = {r["state"]: r["n"] for r in lost}
    figures["server_db_errors_logged"] = cluster.server.text().count("database unavailable")
