"""Operator control of work through the installed ``civic`` command: pause, resume, cancel,
remove and retry, with --json and the human output, their exit codes, and the audit rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from civic_cli import ALPHABET, Civic, write_model

from civic.store import embedded_url

pytestmark = pytest.mark.e2e

FLAKY = """\
import json, sys, time
word, _, until = json.load(open(sys.argv[1]))[0].partition("@")
if until and time.time() < float(until):
    sys.exit("cannot compute " + word + " yet")
json.dump([word.upper()], open(sys.argv[2], "w"))
"""


def audit(civic: Civic) -> list[tuple[str, str]]:
    with psycopg.connect(embedded_url(civic.home)) as conn:
        return conn.execute("SELECT action, target FROM audit ORDER BY id").fetchall()


def test_pause_resume_cancel_retry_and_remove(civic: Civic) -> None:
    civic.env["COLUMNS"] = "160"  # every column of the listings, untruncated
    assert civic("model", "add", str(ALPHABET)).returncode == 0
    letters = str(ALPHABET / "letters.csv")
    assert civic.json("dataset", "import", "alphabet", letters)["id"] == 1
    assert civic.json("dataset", "import", "alphabet", letters, "--again")["id"] == 2

    paused = civic("dataset", "pause", "1")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout == "dataset 1 paused: 26 duties wait; 0 replicas out will finish\n"
    again = civic("dataset", "pause", "1")
    assert again.returncode == 0 and again.stdout.startswith("dataset 1 is already paused")
    missing = civic("dataset", "pause", "9")
    assert missing.returncode == 3
    assert missing.stderr == "civic: error: no dataset 9; see civic dataset list\n"
    listed = civic("dataset", "list")
    assert "state" in listed.stdout and "paused" in listed.stdout and "running" in listed.stdout
    assert [d["state"] for d in civic.json("dataset", "list")] == ["paused", "running"]
    resumed = civic.json("dataset", "resume", "1")
    assert (resumed["changed"], resumed["state"], resumed["waiting"]) == (True, "running", 26)
    assert civic("dataset", "resume", "1").stdout == "dataset 1 is not paused\n"

    model = civic.json("model", "pause", "alphabet")
    assert model["changed"] and model["message"].startswith("model alphabet paused (1 version)")
    assert [m["state"] for m in civic.json("model", "list")] == ["paused"]
    assert "paused" in civic("model", "list").stdout
    assert [d["state"] for d in civic.json("dataset", "list")] == ["paused", "paused"]
    assert civic("model", "resume", "alphabet").stdout == \
        "model alphabet resumed: 52 duties wait for citizens\n"
    assert civic("model", "pause", "nothing").returncode == 3

    cancelled = civic("dataset", "cancel", "2")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == "dataset 2 cancelled: 26 duties cancelled, 0 done keep their results\n"
    row = civic.json("dataset", "list")[1]
    assert (row["state"], row["cancelled"], row["pending"]) == ("cancelled", 26, 0)
    status = civic.json("status")
    assert [d["cancelled"] for d in status["datasets"]] == [0, 26]
    assert "cancelled" in civic("status").stdout

    # Retry: counts first; without a terminal it needs --yes.
    refused = civic("duties", "retry", "--state", "cancelled")
    assert refused.returncode == 2
    assert "dataset 2 (alphabet v1): 26 cancelled" in refused.stdout
    assert refused.stderr == ("civic: error: 26 cancelled duties match; nothing re-queued — "
                              "pass --yes to re-queue them\n")
    assert civic("duties", "retry", "--state", "done").returncode == 2
    assert civic("duties", "retry", "--dataset", "9").returncode == 3
    retried = civic.json("duties", "retry", "--state", "cancelled", "--dataset", "2", "--yes")
    assert retried["total"] == 26 and retried["requeued"][0]["dataset"] == 2
    assert civic.json("dataset", "list")[1]["state"] == "running"
    nothing = civic("duties", "retry")
    assert nothing.returncode == 0 and nothing.stdout == "no duty to retry: 0 failed duties match\n"

    # Remove: a dataset without results goes at once; a model with pending duties needs --yes.
    removed = civic("dataset", "remove", "2")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == "dataset 2 removed: 26 duties (0 with results)\n"
    refused = civic("model", "remove", "alphabet")
    assert refused.returncode == 2
    assert refused.stderr == ("civic: error: model alphabet (1 version, 1 dataset) holds 26 "
                              "duties pending: removing it deletes them; nothing removed — "
                              "pass --yes to remove it\n")
    assert [d["id"] for d in civic.json("dataset", "list")] == [1]
    gone = civic.json("model", "remove", "alphabet", "--yes")
    assert gone["removed"] and gone["versions"] == [1] and gone["bundles"] == 1
    assert civic.json("model", "list") == [] and civic.json("dataset", "list") == []
    assert civic("model", "remove", "alphabet", "--yes").returncode == 3

    assert audit(civic) == [
        ("dataset pause", "dataset 1"), ("dataset resume", "dataset 1"),
        ("model pause", "model alphabet"), ("model resume", "model alphabet"),
        ("dataset cancel", "dataset 2"), ("duties retry", "dataset 2"),
        ("dataset remove", "dataset 2"), ("model remove", "model alphabet")]


def test_failed_duties_are_retried_and_a_dataset_with_results_is_removed_only_with_yes(
        civic: Civic, tmp_path: Path) -> None:
    """A record fails until a moment passes (max_attempts 1: the run ends with it failed);
    once it has passed, `civic duties retry` re-queues it and the next `civic run` resumes the
    dataset and verifies it."""
    until = time.time() + 8  # the first attempts come before it, even on a busy machine
    model = write_model(tmp_path / "flaky", """\
name: flaky
run: python3 model.py {input} {output}
dataset: items.txt
replication: 2
max_attempts: 1
timeout: 10
""", **{"model.py": FLAKY, "items.txt": f"a\nlater@{until}\nb\n"})
    first = civic("run", str(model), "--citizens", "2")
    assert first.returncode == 6, first.stderr
    assert "2 of 3 duties verified, 1 failed" in first.stderr
    time.sleep(max(0.0, until - time.time()))

    plan = civic("duties", "retry", "--error", "CODE 1")  # the duty's error: "exited with code 1"
    assert plan.returncode == 2 and "dataset 1 (flaky v1): 1 failed" in plan.stdout
    assert "1 failed duty whose error contains 'CODE 1' matches" in plan.stderr
    assert civic.json("duties", "retry", "--error", "no such error", "--yes")["total"] == 0
    retried = civic("duties", "retry", "--error", "code 1", "--yes")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines() == ["dataset 1 (flaky v1): 1 failed",
                                           "re-queued 1 duty (failed): 1 of dataset 1"]
    second = civic("run", str(model), "--citizens", "2")
    assert second.returncode == 0, second.stderr
    assert "3 of 3 duties verified" in second.stderr
    rows = [json.loads(line) for line in civic("results", "export", "flaky", "--format",
                                               "jsonl").stdout.splitlines()]
    assert [r["result"] for r in rows] == ["A", "LATER", "B"]

    refused = civic("dataset", "remove", "1")
    assert refused.returncode == 2
    assert refused.stderr == ("civic: error: dataset 1 holds 3 duties with results: removing it "
                              "deletes them; nothing removed — pass --yes to remove it\n")
    assert civic.json("dataset", "list")[0]["done"] == 3
    removed = civic.json("dataset", "remove", "1", "--yes")
    assert removed["removed"] and removed["done"] == 3
    assert civic.json("dataset", "list") == []
    assert [a for a, _ in audit(civic)] == ["duties retry", "dataset remove"]


def on_a_terminal(civic: Civic, answer: str, *args: str) -> tuple[int, str, str]:
    """Run civic with a terminal as its standard input, answering a prompt with ``answer``."""
    import os
    import subprocess

    from civic_cli import CIVIC
    master, slave = os.openpty()
    try:
        process = subprocess.Popen([CIVIC, *args], env=civic.env, stdin=slave,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(master, answer.encode() + b"\n")
        out, err = process.communicate(timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    return process.returncode, out, err


def test_on_a_terminal_it_asks_first(civic: Civic, tmp_path: Path) -> None:
    model = write_model(tmp_path / "upper", """\
name: upper
run: python3 model.py {input} {output}
dataset: items.txt
replication: 1
max_attempts: 1
timeout: 10
""", **{"model.py": FLAKY.replace("time.time() < float(until)", "True"),
        "items.txt": "a\nnever@1\n"})
    assert civic("run", str(model), "--citizens", "1").returncode == 6
    code, out, err = on_a_terminal(civic, "n", "duties", "retry")
    assert code == 1 and "Re-queue 1 failed duty?" in err and "nothing re-queued" in err
    assert out.split("\n")[0] == "dataset 1 (upper v1): 1 failed"
    code, out, err = on_a_terminal(civic, "n", "dataset", "remove", "1")
    assert code == 1 and "dataset 1 holds 1 duty with results: removing it deletes them. " \
                         "Remove it?" in err
    assert civic.json("dataset", "list")[0]["id"] == 1
    code, out, err = on_a_terminal(civic, "y", "dataset", "remove", "1")
    assert code == 0, err
    assert out.strip() == "dataset 1 removed: 2 duties (1 with results)"
    assert civic.json("dataset", "list") == []
