"""`civic volunteer add/list/remove`, `civic dataset import --distinct` and the waiting line of
`civic status`, run in-process against a real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from civic.cli.main import main

pytestmark = pytest.mark.integration


def civic(capsys, url, *args):
    code = main(["--database-url", url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_volunteers_from_the_command_line(database_url, capsys, h):
    code, out, err = civic(capsys, database_url, "volunteer", "add", "alice")
    assert code == 0 and "not shown again" in err
    token = out.strip()
    assert len(token) >= 20 and "\n" not in token
    assert civic(capsys, database_url, "volunteer", "add", "alice")[0] == 2
    assert civic(capsys, database_url, "volunteer", "add", "Bad Name")[0] == 2

    code, out, _ = civic(capsys, database_url, "volunteer", "list", "--json")
    listed = {v["name"]: v for v in json.loads(out)}
    assert set(listed) == {"lab", "alice"} and listed["alice"]["removed"] is False
    assert token not in out
    code, out, _ = civic(capsys, database_url, "volunteer", "list")
    assert code == 0 and "alice" in out

    code, _, err = civic(capsys, database_url, "volunteer", "remove", "alice")
    assert code == 0 and "refused" in err
    assert civic(capsys, database_url, "volunteer", "remove", "alice")[0] == 3
    assert civic(capsys, database_url, "volunteer", "remove", "lab")[0] == 2
    code, out, _ = civic(capsys, database_url, "volunteer", "list", "--json")
    assert {v["name"]: v["removed"] for v in json.loads(out)} == {"lab": False, "alice": True}
    # The name is free again: a new volunteer, a new token.
    code, out, _ = civic(capsys, database_url, "volunteer", "add", "alice")
    assert code == 0 and out.strip() != token


def test_distinct_at_import_and_waiting_in_status(database_url, capsys, h):
    assert civic(capsys, database_url, "model", "add", str(h.ALPHABET))[0] == 0
    letters = str(h.ALPHABET / "letters.csv")
    code, out, err = civic(capsys, database_url, "dataset", "import", "alphabet", letters,
                           "--distinct", "volunteer", "--json")
    assert code == 0, err
    assert json.loads(out)["distinct"] == "volunteer"
    assert civic(capsys, database_url, "dataset", "import", "alphabet", letters,
                 "--distinct", "planet")[0] == 2
    code, out, _ = civic(capsys, database_url, "dataset", "list", "--json")
    assert [d["distinct_by"] for d in json.loads(out)] == ["volunteer"]

    code, out, _ = civic(capsys, database_url, "status")
    assert code == 0 and "26 duties wait: no citizen is connected" in out
    code, out, _ = civic(capsys, database_url, "status", "--json")
    assert json.loads(out)["datasets"][0]["waiting"][0]["kind"] == "no-citizen"
