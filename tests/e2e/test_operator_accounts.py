"""Operator accounts through the installed ``civic`` command: add (the token shown once), list,
remove; and the token logging in at the dashboard of a running ``civic server run --web``."""

from __future__ import annotations

import subprocess

import pytest
from civic_cli import Civic, free_port, wait_for_line
from webkit import Client

pytestmark = pytest.mark.timeout(300)


def fails(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert text in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_add_list_and_remove_operators(civic: Civic) -> None:
    added = civic("operator", "add", "ada")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) >= 40 and "\n" not in token  # the token alone on stdout, for pipes
    assert "/login" in added.stderr and "not shown again" in added.stderr
    as_json = civic.json("operator", "add", "bob")
    assert as_json["name"] == "bob" and len(as_json["token"]) >= 40

    listed = civic.json("operator", "list")
    assert [(o["name"], o["sessions"]) for o in listed] == [("ada", 0), ("bob", 0)]
    assert token not in str(listed) and as_json["token"] not in str(listed)
    table = civic("operator", "list")
    assert table.returncode == 0 and "ada" in table.stdout and token not in table.stdout

    fails(civic("operator", "add", "ada"), 2, "operator 'ada' exists already")
    fails(civic("operator", "add", "Not A Name"), 2, "operator name 'Not A Name' must be")
    fails(civic("operator", "remove", "nobody", "--yes"), 3, "no operator named 'nobody'")
    fails(civic("operator", "remove", "bob"), 2, "pass --yes")  # no terminal to ask on
    assert [o["name"] for o in civic.json("operator", "list")] == ["ada", "bob"]

    removed = civic("operator", "remove", "bob", "--yes")
    assert removed.returncode == 0 and "operator bob removed" in removed.stderr, removed.stderr
    assert [o["name"] for o in civic.json("operator", "list")] == ["ada"]
    again = civic("operator", "add", "bob")  # a removed name may be given again
    assert again.returncode == 0 and again.stdout.strip() != as_json["token"]


def test_the_token_logs_in_at_the_dashboard_until_removed(civic: Civic) -> None:
    token = civic("operator", "add", "ada").stdout.strip()
    web_port = free_port()
    server = civic.start("server", "run", "--host", "127.0.0.1", "--port", str(free_port()),
                         "--web", f"127.0.0.1:{web_port}")
    wait_for_line(server, f"dashboard on http://127.0.0.1:{web_port}/")
    web = Client(f"http://127.0.0.1:{web_port}")
    assert web.post("/login", {"name": "ada", "token": "wrong"}).status == 403
    done = web.post("/login", {"name": "ada", "token": token}, follow=False)
    assert done.status == 303 and "HttpOnly" in done.headers["Set-Cookie"]
    assert "operator <b>ada</b>" in web.get("/").text
    assert civic.json("operator", "list")[0]["sessions"] == 1

    removed = civic("operator", "remove", "ada", "--yes")
    assert "1 open login(s) closed" in removed.stderr, removed.stderr
    assert "read-only" in web.get("/").text  # logged out at the next request
    script = web.get("/", headers={"Authorization": f"Bearer ada:{token}"})
    assert script.status == 401
