"""`civic status --json` against the database, and `civic duty show`, through the installed
command with a real server and citizens."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from civic_cli import CIVIC, wait_for_line  # noqa: E402
from faultkit import (Cluster, pg_ctl, postmaster, start_embedded_postgres,  # noqa: E402
                      wait_until)

pytestmark = pytest.mark.e2e

MODEL = """\
import json, sys
word = json.load(open(sys.argv[1]))[0]
if word == "always":
    sys.stderr.write("trying hard\\n")
    sys.exit("cannot compute " + word)
json.dump([word.upper()], open(sys.argv[2], "w"))
"""


@pytest.fixture
def cluster(tmp_path: Path):
    drill = Cluster(tmp_path)
    try:
        yield drill
    finally:
        drill.close()


def words_model(cluster: Cluster) -> Path:
    directory = cluster.root / "models" / "words"
    directory.mkdir(parents=True)
    (directory / "civic.yaml").write_text(
        "name: words\nrun: python3 model.py {input} {output}\nreplication: 2\ntimeout: 10\n")
    (directory / "model.py").write_text(MODEL)
    (directory / "items.txt").write_text("a\nb\nalways\nc\n")
    return directory


def test_status_json_matches_the_database_and_duty_show_explains(cluster: Cluster) -> None:
    cluster.start_server()
    model = words_model(cluster)
    cluster.add_model(model)
    ds = cluster.import_dataset("words", model / "items.txt")["id"]
    one, two = cluster.agent("one"), cluster.agent("two")
    cluster.wait_finished(ds, 120)
    # The server's own row (refreshed every 2 s) once it counts both citizens.
    wait_until(lambda: cluster.sql("SELECT connections FROM servers WHERE stopped_at IS NULL"
                                   )[0]["connections"] == 2, 30, "the server's row to count 2")
    (server,) = cluster.sql("SELECT address, connections, leased FROM servers")

    status = cluster.cli_json("status")
    (later,) = cluster.sql("SELECT leased FROM servers")  # the row is refreshed every 2 s
    assert {"at", "models", "datasets", "citizens", "people", "errors", "servers",
            "error_hours"} <= set(status)
    (d,) = status["datasets"]
    truth = cluster.sql("SELECT state::text, count(*) AS n FROM duties WHERE dataset_id = %s "
                        "GROUP BY state", (ds,))
    counts = {r["state"]: r["n"] for r in truth}
    for state in ("pending", "done", "failed", "inconclusive", "cancelled"):
        assert d[state] == counts.get(state, 0), state
    assert (d["done"], d["failed"]) == (3, 1)
    assert d["done_last_hour"] == d["done_last_minute"] == 3 and d["eta_seconds"] == 0
    (m,) = status["models"]
    assert (m["name"], m["done"], m["failed"], m["datasets"]) == ("words", 3, 1, 1)
    errors = cluster.sql("SELECT count(*) AS n FROM replicas WHERE error IS NOT NULL")[0]["n"]
    assert errors >= 3
    assert [(e["model"], e["class"], e["count"]) for e in status["errors"]] == [
        ("words", "exit code 1", errors)]
    connected = cluster.sql("SELECT count(*) AS n FROM citizens WHERE connected")[0]["n"]
    assert status["people"]["citizens"]["connected"] == connected == 2
    assert sorted(c["name"] for c in status["citizens"]) == ["one", "two"]
    (shown,) = status["servers"]
    assert (shown["address"], shown["connections"]) == (server["address"], 2)
    assert server["leased"] <= shown["leased"] <= later["leased"]
    assert later["leased"] >= 4  # every duty was leased at least once

    table = cluster.civic("status")
    assert table.returncode == 0, table.stderr
    assert "exit code 1" in table.stdout and server["address"] in table.stdout

    failed = cluster.sql("SELECT id FROM duties WHERE state = 'failed'")[0]["id"]
    shown = cluster.cli_json("duty", "show", str(failed))
    assert (shown["state"], shown["input"], shown["model"]) == ("failed", ["always"], "words")
    replicas = cluster.sql("SELECT count(*) AS n FROM replicas WHERE duty_id = %s",
                           (failed,))[0]["n"]
    assert len(shown["replicas"]) == replicas >= 3
    assert all("trying hard" in r["stderr_tail"] for r in shown["replicas"] if r["error"])
    human = cluster.civic("duty", "show", str(failed))
    assert human.returncode == 0, human.stderr
    assert f"duty {failed} of dataset {ds}, model words v1: failed" in human.stdout
    assert "cannot compute always" in human.stdout and "trying hard" in human.stdout
    done = cluster.sql("SELECT id FROM duties WHERE state = 'done' ORDER BY id LIMIT 1")[0]["id"]
    assert "canonical result" in cluster.civic("duty", "show", str(done)).stdout

    # With its citizens gone, a new dataset's duty says it waits for one.
    cluster.stop_processes([one, two])
    wait_until(lambda: not cluster.sql("SELECT 1 FROM citizens WHERE connected"), 30,
               "the citizens to leave")
    again = cluster.import_dataset("words", model / "items.txt")["id"]
    first = cluster.sql("SELECT min(id) AS id FROM duties WHERE dataset_id = %s",
                        (again,))[0]["id"]
    waiting = cluster.cli_json("duty", "show", str(first))["waiting"]
    assert [w["kind"] for w in waiting] == ["no-citizen"]
    assert "no citizen is connected" in cluster.civic("duty", "show", str(first)).stdout


def test_duty_show_of_a_missing_duty_exits_3(cluster: Cluster) -> None:
    done = cluster.civic("duty", "show", "424242")
    assert done.returncode == 3
    assert done.stderr.strip() == "civic: error: no duty 424242"
    assert cluster.civic("duty", "show", "x").returncode == 2


def test_watch_off_a_terminal_prints_a_snapshot_each_interval(cluster: Cluster) -> None:
    cluster.civic("model", "list")  # the database is up: the snapshots come at once
    watch = subprocess.Popen([CIVIC, "status", "--watch", "--interval", "0.3"],
                             env=cluster.civic.env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_for_line(watch, "civic status")
        lines = wait_for_line(watch, "civic status")  # a second snapshot, printed after
        assert any("no datasets yet" in line for line in lines)
        watch.send_signal(signal.SIGINT)  # Ctrl-C
        assert watch.wait(30) == 0, watch.stderr.read()
    finally:
        watch.kill()
        watch.wait()
    scripts = subprocess.Popen([CIVIC, "status", "--watch", "--json", "--interval", "0.3"],
                               env=cluster.civic.env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        first, second = (json.loads(scripts.stdout.readline()) for _ in range(2))
        assert first["datasets"] == second["datasets"] == [] and second["at"] > first["at"]
        scripts.send_signal(signal.SIGINT)
        assert scripts.wait(30) == 0
    finally:
        scripts.kill()
        scripts.wait()


def test_watch_outlives_a_database_outage(cluster: Cluster) -> None:
    pgdata = cluster.home / "postgres"
    assert cluster.url  # this process keeps the embedded PostgreSQL up between commands
    watch = subprocess.Popen([CIVIC, "status", "--watch", "--json", "--interval", "0.3"],
                             env=cluster.civic.env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        json.loads(watch.stdout.readline())
        info = postmaster(pgdata)
        assert info is not None
        assert pg_ctl(pgdata, "-w", "stop", "-m", "fast").returncode == 0
        said = watch.stderr.readline()  # the outage, said once on one line
        assert "PostgreSQL" in said and "trying again" in said, said
        done = start_embedded_postgres(pgdata, info["socket_dir"] or str(pgdata))
        assert done.returncode == 0, done.stdout + done.stderr
        # Snapshots come again: read until one is taken after the restart.
        back = json.loads(watch.stdout.readline())
        assert back["datasets"] == [] and watch.poll() is None
        watch.send_signal(signal.SIGINT)
        assert watch.wait(30) == 0
    finally:
        watch.kill()
        watch.wait()
