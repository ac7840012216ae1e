"""Drill: two liars on one host, and two liars of one volunteer. Real agent processes; the liars
run a fake `python3` that answers square + 1 at once while honest citizens take 0.3 s a duty.
With `distinct: host` (and `distinct: volunteer`) no canonical result may be wrong."""

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


def _wrong(cluster: Cluster, ds: int) -> list[dict[str, Any]]:
    rows = cluster.sql("SELECT first_record, canonical FROM duties WHERE dataset_id = %s"
                       " AND state = 'done'", (ds,))
    return [r for r in rows if r["canonical"] != [{"n": r["first_record"],
                                                   "square": r["first_record"] ** 2}]]


def _run(cluster: Cluster, distinct: str | None, liars: list[dict[str, str]],
         honest: list[dict[str, str]], figures: dict[str, Any]) -> int:
    model = square_model(cluster.root / "sq", "sq", sleep=0.3,
                         extra="replication: 2\nquorum: 2\nmax_replicas: 4\ntimeout: 30\n")
    assert cluster.url
    cluster.start_server()
    cluster.add_model(model)
    options = ("--distinct", distinct) if distinct else ()
    ds = cluster.import_dataset("sq", numbers(cluster.root / "n.json", DUTIES), *options)["id"]
    lie = fake_python3(cluster.root / "liar-bin", LIE)
    started = time.monotonic()
    for i, where in enumerate(liars, 1):
        cluster.agent(f"liar-{i}", path_first=lie, **where)
    for i, where in enumerate(honest, 1):
        cluster.agent(f"honest-{i}", **where)
    final = cluster.wait_finished(ds, 240)
    figures["run_s"] = round(time.monotonic() - started, 2)
    wrong = _wrong(cluster, ds)
    figures.update(done=final["done"], wrong=len(wrong))
    assert not wrong, wrong
    assert final["done"] == DUTIES, final
    return ds


def test_two_liars_on_one_host_never_make_a_quorum(cluster: Cluster,
                                                   figures: dict[str, Any]) -> None:
    """`distinct: host` is the default: the liars share a host key, the honest ones have their
    own."""
    _run(cluster, None, liars=[{"host": "liars-box"}, {"host": "liars-box"}],
         honest=[{"host": "box-1"}, {"host": "box-2"}], figures=figures)


def test_two_liars_of_one_volunteer_never_make_a_quorum(cluster: Cluster,
                                                        figures: dict[str, Any]) -> None:
    """`distinct: volunteer`: the liars run on two hosts with one volunteer's token; honest
    citizens belong to the lab (the join token) and to another volunteer."""
    tokens = {}
    for name in ("mallory", "alice"):
        done = cluster.civic("volunteer", "add", name, timeout=60)
        assert done.returncode == 0, done.stderr
        tokens[name] = done.stdout.strip().split()[-1]
    _run(cluster, "volunteer",
         liars=[{"host": "m-1", "token": tokens["mallory"]},
                {"host": "m-2", "token": tokens["mallory"]}],
         honest=[{"host": "lab-box"}, {"host": "alice-box", "token": tokens["alice"]}],
         figures=figures)
    listed = {v["name"]: v for v in cluster.cli_json("volunteer", "list")}
    figures["mallory_valid/invalid"] = (f"{listed['mallory']['valid']}/"
                                        f"{listed['mallory']['invalid']}")
    assert listed["mallory"]["valid"] == 0
