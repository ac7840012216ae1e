"""Several servers on one PostgreSQL: `civic server run --reuse-port` processes sharing one port
of 127.0.0.1 and one database.

Drill 1: three servers, six citizens spread over them by the kernel, a few hundred duties of
replication 2; the server that holds the most citizens is SIGKILLed a third of the way in. Its
citizens reconnect to the same HOST:PORT and land on a live server; every duty is verified
exactly once, nothing accepted is lost, nothing is judged twice.

Drill 2: two servers bind the same port and both get citizens (and work).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from faultkit import (CIVIC, Cluster, Proc, assert_unchanged_since, connections, numbers,
                      snapshot, square_model, wait_until)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DUTIES = 300
SERVERS = 3
CITIZENS = 6
SLEEP = 0.05  # seconds a duty: long enough that a kill lands mid-duty for most citizens


def placement(cluster: Cluster, servers: list[Proc], agents: list[Proc]) -> dict[str, Proc]:
    """The live server each agent is connected to now, found from /proc (the socket of the
    server that accepted it), for the agents connected now."""
    accepted = {remote: server for server in servers if server.alive
                for local, remote in connections(server.pid) if local == cluster.port}
    found = {}
    for agent in agents:
        mine = [local for local, remote in connections(agent.pid) if remote == cluster.port]
        if len(mine) == 1 and mine[0] in accepted:
            found[agent.name] = accepted[mine[0]]
    return found


def placed(cluster: Cluster, servers: list[Proc], agents: list[Proc],
           what: str) -> dict[str, Proc]:
    """Wait until every agent is connected to one of ``servers``; where each one is."""
    return wait_until(lambda: (lambda on: on if len(on) == len(agents) else None)(
        placement(cluster, servers, agents)), 60, what)


def results_since(cluster: Cluster, since: Any, names: list[str]) -> set[str]:
    """Those of the citizens ``names`` that returned a result after the database time ``since``."""
    return {r["name"] for r in cluster.sql(
        "SELECT DISTINCT c.name FROM replicas r JOIN citizens c ON c.id = r.citizen_id "
        "WHERE r.returned_at > %s AND c.name = ANY(%s)", (since, names))}


def test_three_servers_one_sigkilled_lose_and_duplicate_nothing(cluster: Cluster,
                                                                 figures: dict[str, Any]) -> None:
    model = square_model(cluster.root / "slow", "slow", sleep=SLEEP, extra=(
        "replication: 2\nquorum: 2\nmax_replicas: 4\ndistinct: citizen\ntimeout: 30\n"))
    assert cluster.url  # join the embedded PostgreSQL: it stays up whatever the servers do
    servers = cluster.start_servers(SERVERS)
    assert len({s.pid for s in servers}) == SERVERS and all(s.alive for s in servers)
    cluster.add_model(model)
    dataset = cluster.import_dataset("slow", numbers(cluster.root / "n.json", DUTIES))
    assert dataset["duties"] == DUTIES
    ds = dataset["id"]
    settings = cluster.sql("SELECT quorum, max_replicas FROM datasets WHERE id = %s", (ds,))[0]
    assert settings == {"quorum": 2, "max_replicas": 4}

    started = time.monotonic()
    names = [f"citizen-{i}" for i in range(1, CITIZENS + 1)]
    agents = [cluster.agent(name) for name in names]
    on = placed(cluster, servers, agents, "every citizen to connect to a server")
    spread = Counter(on[n].name for n in names)
    figures["citizens_per_server"] = dict(sorted(spread.items()))

    # The victim: the server with the most citizens (at least CITIZENS / SERVERS of them).
    victim = max(servers, key=lambda s: spread[s.name])
    orphans = sorted(n for n in names if on[n] is victim)
    survivors = [s for s in servers if s is not victim]
    assert len(orphans) >= CITIZENS // SERVERS

    wait_until(lambda: cluster.progress(ds)["done"] >= DUTIES // 3, 300,
               "a third of the duties to be done", 0.1)
    assert placement(cluster, servers, agents) == on, "a citizen moved before the kill"
    victim.kill()  # SIGKILL: no drain, no goodbye, its transactions in flight abort
    killed = time.monotonic()
    before = snapshot(cluster, ds)
    figures["done_at_kill"] = len(before[0])
    figures["orphans_leased_at_kill"] = cluster.sql(
        "SELECT count(*) AS n FROM replicas r JOIN citizens c ON c.id = r.citizen_id "
        "WHERE r.state = 'leased' AND c.name = ANY(%s)", (orphans,))[0]["n"]
    db_now = cluster.sql("SELECT now() AS t")[0]["t"]

    # Its citizens come back on the same HOST:PORT, and the kernel gives them to a live server,
    # which serves them: each returns results again.
    after = placed(cluster, survivors, agents, "the citizens to connect to surviving servers")
    rejoined_at = time.monotonic()
    figures["citizens_per_server_after_kill"] = dict(sorted(Counter(
        after[n].name for n in names).items()))
    wait_until(lambda: results_since(cluster, db_now, names) == set(names), 120,
               "a result from every citizen after the kill", 0.1)
    all_returning = time.monotonic()
    final = cluster.wait_finished(ds, 300)
    finished = time.monotonic()
    assert all(s.alive for s in survivors), cluster.diagnostics()
    figures.update(kill_to_all_reconnected_s=round(rejoined_at - killed, 2),
                   kill_to_every_citizen_returning_s=round(all_returning - killed, 2),
                   kill_to_all_done_s=round(finished - killed, 2),
                   total_run_s=round(finished - started, 2))

    # nothing lost: every duty done, none failed, no attempt charged
    figures["lost"] = DUTIES - final["done"]
    assert final == {"total": DUTIES, "pending": 0, "done": DUTIES, "failed": 0,
                     "inconclusive": 0}, final
    failures = cluster.sql("SELECT coalesce(sum(failures), 0)::int AS n FROM duties "
                           "WHERE dataset_id = %s", (ds,))[0]["n"]
    figures["failures_charged"] = failures
    assert failures == 0, "a killed server is no citizen's fault: nothing may be charged"

    assert_unchanged_since(cluster, ds, before)  # every result accepted before the kill

    # verified exactly once: one canonical replica per duty, valid, of that duty, and exactly
    # quorum valid replicas from as many distinct citizens
    rows = cluster.sql("""
        SELECT u.id, u.canonical_replica_id AS crid, c.duty_id AS c_duty,
               c.state::text AS c_state,
               count(r.id) FILTER (WHERE r.state = 'valid') AS valid,
               count(DISTINCT r.citizen_id) FILTER (WHERE r.state = 'valid') AS valid_citizens
        FROM duties u LEFT JOIN replicas c ON c.id = u.canonical_replica_id
                      LEFT JOIN replicas r ON r.duty_id = u.id
        WHERE u.dataset_id = %s GROUP BY u.id, c.id""", (ds,))
    bad = [r for r in rows if r["c_duty"] != r["id"] or r["c_state"] != "valid"]
    assert not bad, f"canonical replicas not valid replicas of their duty: {bad[:5]}"
    crids = [r["crid"] for r in rows]
    assert len(set(crids)) == len(crids) == DUTIES
    off = [r for r in rows if r["valid"] != settings["quorum"]
           or r["valid_citizens"] != settings["quorum"]]
    assert not off, f"duties without exactly quorum valid replicas of distinct citizens: {off[:5]}"

    # nothing judged twice: the citizens' running counts add up to the valid replicas
    valid = cluster.sql("SELECT count(*) AS n FROM replicas WHERE state = 'valid'")[0]["n"]
    counted = cluster.sql("SELECT coalesce(sum(valid_count), 0)::int AS v, "
                          "coalesce(sum(invalid_count), 0)::int AS i FROM citizens")[0]
    assert valid == DUTIES * settings["quorum"]
    assert counted == {"v": valid, "i": 0}, counted

    # never two replicas of one duty leased to one citizen at the same time (an expired
    # replica ended at its deadline, which expiring sets to the moment it expired)
    overlapping = cluster.sql("""
        WITH spans AS (
            SELECT r.id, r.duty_id, r.citizen_id, r.leased_at,
                   CASE WHEN r.state = 'expired' THEN r.deadline
                        ELSE coalesce(r.returned_at, 'infinity') END AS ended
            FROM replicas r JOIN duties u ON u.id = r.duty_id WHERE u.dataset_id = %s)
        SELECT a.id AS a, b.id AS b FROM spans a JOIN spans b
          ON a.duty_id = b.duty_id AND a.citizen_id = b.citizen_id AND a.id < b.id
         AND tstzrange(a.leased_at, a.ended) && tstzrange(b.leased_at, b.ended)""", (ds,))
    assert not overlapping, overlapping[:5]
    states = cluster.sql("""SELECT r.state::text AS state, count(*) AS n FROM replicas r
                            JOIN duties u ON u.id = r.duty_id WHERE u.dataset_id = %s
                            GROUP BY 1 ORDER BY 1""", (ds,))
    figures["replicas"] = {r["state"]: r["n"] for r in states}
    assert not {r["state"] for r in states} - {"valid", "expired", "late"}, states

    # the researcher's view: exactly one correct row per record
    exported = cluster.export("slow")
    assert len(exported) == DUTIES
    assert sorted(r["record"] for r in exported) == list(range(DUTIES))
    wrong = [r for r in exported if r["n"] != r["record"] or r["square"] != r["record"] ** 2]
    assert not wrong, wrong[:5]
    figures["exported_rows"] = len(exported)


def test_two_servers_share_one_port_and_both_get_citizens(cluster: Cluster,
                                                          figures: dict[str, Any]) -> None:
    """The kernel spreads connections over the sockets of a SO_REUSEPORT group by a hash of
    the connection (the source port, here). Eight citizens land all on one of two servers one
    time in 128, so citizens are added one at a time until both servers have some (and at
    least eight are connected): at most 24, which all land on one server once in ~8 million."""
    model = square_model(cluster.root / "quick", "quick", sleep=0.3,
                         extra="replication: 1\ntimeout: 30\n")
    assert cluster.url
    servers = cluster.start_servers(2)
    # a server without --reuse-port cannot take the port from them
    intruder = cluster.start("server-intruder", [CIVIC, "server", "run", "--host", "127.0.0.1",
                                                 "--port", str(cluster.port)])
    assert intruder.popen.wait(60) == 5, intruder.tail()
    assert "already in use" in intruder.text()

    agents: list[Proc] = []
    while len(agents) < 24:
        agents.append(cluster.agent(f"citizen-{len(agents) + 1}"))
        on = placed(cluster, servers, agents, f"{agents[-1].name} to connect")
        if len(agents) >= 8 and len(set(on.values())) == 2:
            break
    per_server = Counter(server.name for server in on.values())
    figures["citizens_per_server"] = dict(sorted(per_server.items()))
    assert set(per_server) == {s.name for s in servers}, per_server

    # and both serve: citizens of each server compute a dataset (ten duties of 0.3 s a citizen:
    # long enough that an idle citizen, which asks again every 2 s, gets its share)
    count = 10 * len(agents)
    cluster.add_model(model)
    ds = cluster.import_dataset("quick", numbers(cluster.root / "n.json", count))["id"]
    final = cluster.wait_finished(ds, 300)
    assert final["done"] == count, final
    assert placement(cluster, servers, agents) == on, "a citizen moved"
    worked = {r["name"] for r in cluster.sql(
        "SELECT c.name FROM citizens c WHERE c.valid_count > 0")}
    served = Counter(on[name].name for name in worked)
    figures["citizens_with_results_per_server"] = dict(sorted(served.items()))
    assert set(served) == {s.name for s in servers}, served
    exported = cluster.export("quick")
    assert sorted((r["n"], r["square"]) for r in exported) == [(n, n * n) for n in range(count)]
