"""Operator control with real processes: two `civic server run --reuse-port` on one port and one
database, citizen agents in processes of their own, and the operator's `civic` commands.

A citizen blocked mid-job stops by itself (exit 7) saying why, gets nothing leased after the
block committed, is refused when it comes back; a drain of the project stops both servers'
leasing while what is out comes back and counts, and the job finishes once undrained, every
duty verified once and nothing charged. The servers' log lines are in the database and stay
there when a server stops.
"""

from __future__ import annotations

import json

import pytest
from faultkit import Cluster, numbers, square_model, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DUTIES = 120
CITIZENS = 4


def leased_after(cluster: Cluster, when, names: list[str] | None = None) -> int:
    return cluster.sql("SELECT count(*) AS n FROM replicas r JOIN citizens c"
                       " ON c.id = r.citizen_id WHERE r.leased_at > %s"
                       " AND (%s::text[] IS NULL OR c.name = ANY(%s))",
                       (when, names, names))[0]["n"]


def test_block_and_drain_with_two_server_processes(cluster: Cluster, figures) -> None:
    model = square_model(cluster.root / "slow", "slow", sleep=0.1, extra=(
        "replication: 2\nquorum: 2\nmax_replicas: 4\ndistinct: citizen\ntimeout: 30\n"))
    assert cluster.url
    servers = cluster.start_servers(2)
    cluster.add_model(model)
    ds = cluster.import_dataset("slow", numbers(cluster.root / "n.json", DUTIES))["id"]
    names = [f"citizen-{i}" for i in range(1, CITIZENS + 1)]
    agents = {name: cluster.agent(name) for name in names}
    wait_until(lambda: cluster.progress(ds)["done"] >= 10, 120, "some duties done")

    # Block one citizen: it stops by itself, told why, and gets nothing from then on.
    done = cluster.civic("citizen", "block", "citizen-1", "--reason", "drill", "--json")
    assert done.returncode == 0, done.stderr
    committed = cluster.sql("SELECT now() AS t")[0]["t"]
    wait_until(lambda: not agents["citizen-1"].alive, 60, "the blocked citizen to stop")
    assert agents["citizen-1"].popen.returncode == 7
    assert "is blocked on this server: drill" in agents["citizen-1"].text()
    back = cluster.agent("citizen-1")  # comes back, on whichever server: refused at hello
    wait_until(lambda: not back.alive, 60, "the blocked citizen to be refused again")
    assert back.popen.returncode == 7 and "drill" in back.text()
    assert any("dropped: citizen 'citizen-1' is blocked" in s.text() for s in servers)

    # Drain the project: neither server leases; what is out comes back and counts.
    wait_until(lambda: cluster.progress(ds)["done"] >= 20, 120, "more duties done")
    done = cluster.civic("server", "drain", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["servers"]) == 2
    drained = cluster.sql("SELECT now() AS t")[0]["t"]
    for server in servers:
        server.wait_for("draining: leasing nothing more", 60)
    wait_until(lambda: cluster.sql("SELECT count(*) AS n FROM replicas WHERE state = 'leased'"
                                   )[0]["n"] == 0, 60, "the replicas in flight to come back")
    paused = cluster.progress(ds)
    figures["done_when_drained"] = paused["done"]
    assert paused["pending"] > 0
    wait_until(lambda: all("draining" in s.text() for s in servers), 10, "both to say so")
    listed = cluster.cli_json("server", "servers")
    assert len(listed) == 2 and all(r["draining"] for r in listed)
    assert leased_after(cluster, drained) == 0
    assert all(a.alive for n, a in agents.items() if n != "citizen-1")

    done = cluster.civic("server", "undrain")
    assert done.returncode == 0, done.stderr
    final = cluster.wait_finished(ds, 300)
    assert final == {"total": DUTIES, "pending": 0, "done": DUTIES, "failed": 0,
                     "inconclusive": 0}, final
    assert leased_after(cluster, committed, ["citizen-1"]) == 0
    rows = cluster.sql("SELECT u.failures, r.state::text AS state FROM duties u JOIN replicas r"
                       " ON r.id = u.canonical_replica_id WHERE u.dataset_id = %s", (ds,))
    assert len(rows) == DUTIES and all(r == {"failures": 0, "state": "valid"} for r in rows)
    expired = cluster.sql("SELECT count(*) FILTER (WHERE charged) AS charged, count(*) AS n"
                          " FROM replicas WHERE state = 'expired'")[0]
    figures["expired_replicas"] = expired["n"]
    assert expired["charged"] == 0

    # The servers' log lines: in the database, from both, and kept when one stops.
    ids = {r["id"] for r in listed}
    servers[0].stop()
    events = cluster.cli_json("server", "logs", "-n", "1000")
    assert {e["server_id"] for e in events} == ids
    messages = [e["message"] for e in events]
    assert sum(m.startswith("draining: leasing nothing more") for m in messages) == 2
    assert any("dropped: citizen 'citizen-1' is blocked on this server: drill" in m
               for m in messages)
    assert "stopped" in messages
    assert not any(e["level"] == "DEBUG" for e in events)
    audit = [r["action"] for r in cluster.sql("SELECT action FROM audit ORDER BY id")]
    assert audit == ["citizen block", "server drain", "server undrain"]
