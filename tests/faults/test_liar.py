"""Drill 4: a liar among three citizens. Its model runs a fake `python3` that answers square+1;
replication 2 / quorum 2 / max_replicas 4 must keep every canonical result right."""

from __future__ import annotations

import time
from typing import Any

import pytest
from faultkit import Cluster, fake_python3, numbers, square_model

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DUTIES = 20

LIE = """\
records = json.load(open(INPUT))
json.dump([{"n": r["n"], "square": r["n"] ** 2 + 1} for r in records], open(OUTPUT, "w"))
"""


def test_liar_is_outvoted_and_never_canonical(cluster: Cluster, figures: dict[str, Any]) -> None:
    model = square_model(cluster.root / "sq", "sq", sleep=0.05,
                         extra="replication: 2\nquorum: 2\nmax_replicas: 4\ntimeout: 30\n")
    assert cluster.url
    cluster.start_server()
    cluster.add_model(model)
    ds = cluster.import_dataset("sq", numbers(cluster.root / "n.json", DUTIES))["id"]

    started = time.monotonic()
    liar = cluster.agent("liar", path_first=fake_python3(cluster.root / "liar-bin", LIE))
    honest = [cluster.agent(f"honest-{i}") for i in (1, 2)]
    final = cluster.wait_finished(ds, 180)
    figures["run_s"] = round(time.monotonic() - started, 2)
    assert final["done"] == DUTIES, final

    # no canonical result is wrong: check every one
    rows = cluster.sql("""SELECT u.id, u.first_record, u.canonical, c.citizen_id,
                                 (SELECT count(*) FROM replicas r WHERE r.duty_id = u.id
                                    AND r.state = 'valid') AS valid
                          FROM duties u JOIN replicas c ON c.id = u.canonical_replica_id
                          WHERE u.dataset_id = %s ORDER BY u.id""", (ds,))
    assert len(rows) == DUTIES
    wrong = [r for r in rows if r["canonical"] != [{"n": r["first_record"],
                                                     "square": r["first_record"] ** 2}]]
    assert not wrong, wrong
    assert all(r["valid"] >= 2 for r in rows)

    citizens = {c["name"]: c for c in cluster.cli_json("status")["citizens"]}
    figures.update({f"{name}_valid/invalid/error": f"{c['valid_count']}/{c['invalid_count']}/"
                                                    f"{c['error_count']}"
                    for name, c in citizens.items()})
    figures["liar_cooldown_until"] = citizens["liar"].get("cooldown_until")
    assert citizens["liar"]["invalid_count"] > 0, citizens["liar"]
    assert citizens["liar"]["valid_count"] == 0, citizens["liar"]
    for name in ("honest-1", "honest-2"):
        assert citizens[name]["invalid_count"] == 0, citizens[name]
        assert citizens[name]["error_count"] == 0, citizens[name]
    liar_id = str(citizens["liar"]["id"])
    assert all(str(r["citizen_id"]) != liar_id for r in rows)
    judged = cluster.sql("""SELECT r.state::text AS state, count(*) AS n FROM replicas r
                            JOIN citizens c ON c.id = r.citizen_id WHERE c.name = 'liar'
                            GROUP BY 1""")
    figures["liar_replicas"] = {r["state"]: r["n"] for r in judged}
    assert "valid" not in figures["liar_replicas"]
    assert liar.alive and all(p.alive for p in honest)
    exported = cluster.export("sq")
    assert sorted((r["record"], r["square"]) for r in exported) == [(n, n * n)
                                                                   for n in range(DUTIES)]
