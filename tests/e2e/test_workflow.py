"""The researcher's and volunteer's workflows, through the installed ``civic`` command."""

from __future__ import annotations

import csv
import io
import json
import signal
import string
from pathlib import Path

import pytest
from civic_cli import ALPHABET, Civic, free_port, next_letter, wait_for_line, write_model

pytestmark = pytest.mark.e2e


def assert_alphabet(rows: list[dict[str, str]]) -> None:
    """26 rows, one per letter, each with the right next letter."""
    assert sorted(int(r["record"]) for r in rows) == list(range(26))
    for row in rows:
        letter = string.ascii_lowercase[int(row["record"])]
        assert row["original_letter"] == letter
        assert row["letter"] == next_letter(letter)


def test_run_computes_the_alphabet_in_one_command(civic: Civic) -> None:
    done = civic("run", str(ALPHABET), "--citizens", "4")
    assert done.returncode == 0, done.stderr
    assert "26 of 26 duties verified" in done.stderr
    assert "original_letter" in done.stdout and "│ z " in done.stdout

    exported = civic("results", "export", "alphabet", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(rows) == 26
    assert_alphabet(rows)

    status = civic.json("status")
    assert [(d["done"], d["pending"]) for d in status["datasets"]] == [(26, 0)]
    assert len(status["citizens"]) == 4
    # replication 2: each duty was computed by two citizens, and all agreed
    assert sum(c["valid_count"] for c in status["citizens"]) == 52
    assert all(c["invalid_count"] == 0 and c["error_count"] == 0 for c in status["citizens"])


def test_server_and_spawned_citizens_as_separate_commands(civic: Civic) -> None:
    port = free_port()
    server = civic.start("server", "start", "--host", "127.0.0.1", "--port", str(port))
    wait_for_line(server, f"listening on 127.0.0.1:{port}")

    added = civic("model", "add", str(ALPHABET))
    assert added.returncode == 0 and "version 1" in added.stdout, added.stderr
    again = civic("model", "add", str(ALPHABET))
    assert "unchanged" in again.stdout

    # Both citizens run on this machine (one host key): their results are distinct by citizen.
    imported = civic.json("dataset", "import", "alphabet", str(ALPHABET / "letters.csv"),
                          "--distinct", "citizen")
    assert (imported["records"], imported["duties"], imported["quorum"]) == (26, 26, 2)

    token = civic("server", "token")
    assert token.returncode == 0 and len(token.stdout.strip()) >= 20, token.stderr
    civic.env["CIVIC_TOKEN"] = token.stdout.strip()  # as a volunteer is told to
    spawn = civic.start("citizen", "spawn", "--runtime", "process", "--count", "2",
                        f"127.0.0.1:{port}")
    finished = civic.wait_done(imported["id"])
    assert finished["done"] == 26

    spawn.send_signal(signal.SIGINT)
    assert spawn.wait(30) == 0
    exported = civic("results", "export", "alphabet", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(rows[0]) == ["duty", "record", "original_letter", "letter"]
    assert_alphabet(rows)

    out = civic.home / "results.jsonl"
    written = civic("results", "export", "alphabet", "--format", "jsonl", "-o", str(out))
    assert written.returncode == 0 and len(out.read_text().splitlines()) == 26

    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0


def test_any_language_json_input_several_records_per_duty(civic: Civic, tmp_path: Path) -> None:
    model = write_model(tmp_path / "square", """\
name: square
run: python3 square.py {input} {output}
dataset: numbers.json
input: {records_per_duty: 3}
replication: 2
""", **{"square.py": """\
import json, sys
records = json.load(open(sys.argv[1]))
json.dump([{"n": r["n"], "square": r["n"] ** 2} for r in records], open(sys.argv[2], "w"))
""", "numbers.json": json.dumps([{"n": n} for n in range(10)])})
    done = civic("run", str(model), "--citizens", "2", "-o", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [(int(r["record"]), int(r["square"])) for r in rows] == [(n, n * n) for n in range(10)]
    assert {r["duty"] for r in rows} == {"1", "2", "3", "4"}  # 10 records, 3 per duty


def test_run_reports_failed_duties_and_exits_non_zero(civic: Civic, tmp_path: Path) -> None:
    model = write_model(tmp_path / "broken", """\
name: broken
run: sh fail.sh {input} {output}
dataset: items.txt
replication: 1
max_attempts: 2
timeout: 10
""", **{"fail.sh": "echo 'boom: cannot compute' >&2\nexit 3\n", "items.txt": "one\ntwo\n"})
    done = civic("run", str(model), "--citizens", "2")
    assert done.returncode == 6
    assert "0 of 2 duties verified, 2 failed" in done.stderr
    assert "exited with code 3" in done.stderr and "boom: cannot compute" in done.stderr
    assert "Traceback" not in done.stderr
