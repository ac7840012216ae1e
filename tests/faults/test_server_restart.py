"""Drill: three graceful server restarts (SIGTERM, start again) while citizens compute long
duties. Leases stay across a graceful stop; citizens come back holding their replicas, so no
failure is charged and every duty is done."""

from __future__ import annotations

import time
from typing import Any

import pytest
from faultkit import Cluster, numbers, square_model, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DUTIES = 2
SLEEP = 20.0  # seconds each duty computes: long enough for three restarts


def test_graceful_restarts_during_long_duties_charge_nothing(cluster: Cluster,
                                                             figures: dict[str, Any]) -> None:
    model = square_model(cluster.root / "long", "long", sleep=SLEEP,
                         extra="replication: 1\ntimeout: 120\n")
    assert cluster.url
    cluster.start_server(grace=0.5)
    cluster.add_model(model)
    ds = cluster.import_dataset("long", numbers(cluster.root / "n.json", DUTIES))["id"]
    for i in (1, 2):
        cluster.agent(f"worker-{i}")
    try:  # a citizen's heartbeat marks the replica it starts (a contained model leaves no mark)
        wait_until(lambda: len(cluster.sql("SELECT 1 FROM replicas WHERE started_at IS NOT NULL"
                                           )) == DUTIES, 60, "both duties to start")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.diagnostics()}") from None
    started = time.monotonic()
    for _ in range(3):
        assert cluster.server is not None
        cluster.server.stop()
        assert cluster.server.popen.returncode == 0, cluster.server.tail()
        cluster.start_server(grace=0.5)
    figures["restarts_s"] = round(time.monotonic() - started, 2)
    final = cluster.wait_finished(ds, 120)
    figures["duty_failures"] = [r["failures"] for r in cluster.sql(
        "SELECT failures FROM duties WHERE dataset_id = %s ORDER BY id", (ds,))]
    assert final["done"] == DUTIES, final
    assert figures["duty_failures"] == [0] * DUTIES
    replicas = cluster.sql("SELECT state::text AS state, count(*) AS n FROM replicas GROUP BY 1")
    assert replicas == [{"state": "valid", "n": DUTIES}], replicas
