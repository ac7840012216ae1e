"""Bad input gets a clear message, a non-zero exit, no traceback — and changes nothing."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from civic_cli import ALPHABET, Civic, free_port, wait_for_line

pytestmark = pytest.mark.e2e


def fails(done: object, code: int, *needles: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in done.stderr, done.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in done.stderr  # type: ignore[attr-defined]


def test_manifest_without_run(civic: Civic, tmp_path: Path) -> None:
    (tmp_path / "civic.yaml").write_text("name: norun\nbuild: make\n")
    fails(civic("model", "add", str(tmp_path)), 2, str(tmp_path / "civic.yaml"), "'run'")
    assert civic.json("model", "list") == []


def test_manifest_with_a_typo_names_the_key(civic: Civic, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(ALPHABET, model)
    text = (model / "civic.yaml").read_text().replace("replication:", "replicaton:")
    (model / "civic.yaml").write_text(text)
    fails(civic("model", "add", str(model)), 2, "civic.yaml", "replicaton")


def test_unknown_model(civic: Civic) -> None:
    fails(civic("dataset", "import", "nosuchmodel", str(ALPHABET / "letters.csv")), 3,
          "no model named 'nosuchmodel'")
    fails(civic("results", "export", "nosuchmodel"), 3, "nosuchmodel")
    fails(civic("model", "show", "nosuchmodel"), 3, "nosuchmodel")


def test_bad_csv_row_aborts_the_import(civic: Civic, tmp_path: Path) -> None:
    assert civic("model", "add", str(ALPHABET)).returncode == 0
    bad = tmp_path / "letters.csv"
    bad.write_text("letter\na\nb\nc\nd,extra\ne\n")
    fails(civic("dataset", "import", "alphabet", str(bad)), 2, f"{bad}, line 5")
    assert civic.json("dataset", "list") == []


def test_port_already_in_use(civic: Civic) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails(civic("server", "start", "--host", "127.0.0.1", "--port", str(port)), 5,
              f"port {port}", "already in use")


def test_database_unreachable(civic: Civic) -> None:
    url = "postgresql://civic:secret-password@127.0.0.1:1/civic"
    done = civic("--database-url", url, "status")
    fails(done, 4, "cannot reach PostgreSQL at postgresql://civic:***@127.0.0.1:1/civic")
    assert "secret-password" not in done.stderr


@pytest.mark.parametrize("url", [
    "host=127.0.0.1 port=1 user=civic password=secret-password dbname=civic",
    "host=127.0.0.1 port=1 password='secret-password' dbname=civic",
    "postgresql://civic@127.0.0.1:1/civic?password=secret-password",
    "postgresql://civic:secret-password@127.0.0.1:1/civic?password=secret-password",
])
def test_the_password_is_hidden_in_every_form_of_connection_string(civic: Civic, url: str) -> None:
    done = civic("--database-url", url, "status")
    fails(done, 4, "cannot reach PostgreSQL at ")
    assert "secret-password" not in done.stderr + done.stdout


def test_bad_arguments(civic: Civic) -> None:
    fails(civic("citizen", "spawn", "not:an:address"), 2, "not a HOST:PORT address")
    fails(civic("dataset", "import", "alphabet", "/no/such/file.csv"), 2, "no such file")
    fails(civic("results", "export", "alphabet", "--format", "xml"), 2, "csv or jsonl")
    fails(civic("run", str(ALPHABET), "--citizens", "0"), 2)


def test_debug_shows_the_traceback(civic: Civic) -> None:
    done = civic("--debug", "model", "show", "nosuchmodel")
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_every_command_has_help_and_listings_have_json(civic: Civic) -> None:
    top = civic("--help")
    for command in ("server", "model", "dataset", "citizen", "results", "status", "run"):
        assert command in top.stdout
    assert "image" in top.stdout
    for args in (["server", "run"], ["server", "start"], ["server", "install"], ["server", "stop"],
                 ["server", "status"], ["server", "logs"], ["server", "uninstall"],
                 ["model", "add"], ["model", "list"], ["model", "show"],
                 ["dataset", "import"], ["dataset", "list"], ["citizen", "run"],
                 ["citizen", "spawn"], ["citizen", "list"], ["citizen", "stop"],
                 ["citizen", "start"], ["citizen", "remove"], ["citizen", "logs"],
                 ["image", "build"], ["results", "export"], ["status"], ["run"]):
        done = civic(*args, "--help")
        assert done.returncode == 0 and "Usage" in done.stdout, args
    for args in (["model", "list"], ["dataset", "list"], ["status"], ["citizen", "list"],
                 ["server", "status"]):
        assert "--json" in civic(*args, "--help").stdout


def test_a_wrong_join_token_is_refused_and_never_echoed(civic: Civic) -> None:
    port = free_port()
    server = civic.start("server", "start", "--host", "127.0.0.1", "--port", str(port))
    wait_for_line(server, f"listening on 127.0.0.1:{port}")
    token = civic("server", "token").stdout.strip()
    civic.env["CIVIC_TOKEN"] = "not-the-token-42"
    done = civic("citizen", "run", f"127.0.0.1:{port}", "--name", "intruder", timeout=60)
    fails(done, 7, "join token")
    assert "not-the-token-42" not in done.stderr and token not in done.stderr
    server.terminate()
    log = server.communicate(timeout=60)[0]
    assert "refused" in log or "join token" in log
    assert token not in log and "not-the-token-42" not in log
