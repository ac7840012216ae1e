"""Operator control through the installed ``civic`` command: block and unblock citizens and
volunteers, drain and undrain servers, list them, and read (and follow) the servers' log lines
kept in the database."""

from __future__ import annotations

import json
import subprocess

import pytest
from civic_cli import Civic, free_port, wait_for_line

pytestmark = pytest.mark.timeout(300)


def fails(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert text in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def serve(civic: Civic) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    server = civic.start("server", "start", "--host", "127.0.0.1", "--port", str(port))
    wait_for_line(server, f"listening on 127.0.0.1:{port}")
    return server, f"127.0.0.1:{port}"


def citizen(civic: Civic, address: str, name: str) -> subprocess.Popen[str]:
    process = civic.start("citizen", "run", address, "--name", name)
    wait_for_line(process, "connected to")
    return process


def test_block_and_unblock_a_citizen_and_a_volunteer(civic: Civic) -> None:
    server, address = serve(civic)
    civic.env["CIVIC_TOKEN"] = civic("server", "token").stdout.strip()
    c1 = citizen(civic, address, "c1")

    blocked = civic.json("citizen", "block", "c1", "--reason", "too many errors")
    assert blocked["kind"] == "citizen" and blocked["name"] == "c1" and blocked["blocked"]
    assert blocked["reason"] == "too many errors" and blocked["changed"]
    out, _ = c1.communicate(timeout=60)  # dropped at once, told why; stops by itself
    assert c1.returncode == 7, out
    assert "blocked on this server: too many errors" in out

    again = civic("citizen", "run", address, "--name", "c1", timeout=60)  # refused at hello
    assert again.returncode == 7 and "Traceback" not in again.stderr, again.stderr
    assert again.stderr.strip().splitlines()[-1].endswith(
        "the server refused this citizen: citizen 'c1' is blocked on this server: too many "
        "errors"), again.stderr

    done = civic("citizen", "unblock", "c1")
    assert done.returncode == 0 and "citizen c1 unblocked" in done.stderr, done.stderr
    citizen(civic, address, "c1")  # welcome again

    fails(civic("citizen", "block", "nobody"), 3, "no citizen named or numbered 'nobody'")
    fails(civic("volunteer", "block", "nobody"), 3, "no volunteer named 'nobody'")
    fails(civic("citizen", "block", "c1", "--reason", "x" * 501), 2, "--reason")

    assert civic("volunteer", "add", "vera").returncode == 0
    vera = civic.json("volunteer", "block", "vera", "--reason", "asked to leave")
    assert vera["kind"] == "volunteer" and vera["blocked"] and vera["citizens"] == 0
    listed = {v["name"]: v for v in civic.json("volunteer", "list")}
    assert listed["vera"]["blocked"] and listed["vera"]["blocked_reason"] == "asked to leave"
    assert not listed["lab"]["blocked"]
    done = civic("volunteer", "block", "vera")
    assert done.returncode == 0 and "already" in done.stderr
    done = civic("volunteer", "unblock", "vera")
    assert done.returncode == 0 and "volunteer vera unblocked" in done.stderr
    assert civic.json("volunteer", "unblock", "vera")["changed"] is False

    server.terminate()
    assert server.wait(60) == 0


def test_drain_undrain_servers_and_logs(civic: Civic) -> None:
    server, _ = serve(civic)
    rows = civic.json("server", "servers")
    assert len(rows) == 1 and rows[0]["alive"] and not rows[0]["draining"]
    server_id = rows[0]["id"]

    drained = civic.json("server", "drain")
    assert drained == {"draining": True, "servers": [server_id], "project": True}
    assert civic.json("server", "servers")[0]["draining"] is True
    status = civic.json("server", "status")
    assert [s["id"] for s in status["servers"]] == [server_id] and status["servers"][0]["draining"]
    civic.env["COLUMNS"] = "160"  # a wide terminal: whole cells
    done = civic("server", "servers")
    assert done.returncode == 0 and "draining" in done.stdout and server_id[:8] in done.stdout
    follow = civic.start("server", "logs", "--follow", "-n", "1")
    wait_for_line(follow, "draining: leasing nothing more")

    done = civic("server", "undrain", server_id[:8])
    fails(done, 2, "whole project is drained")
    done = civic("server", "undrain")
    assert done.returncode == 0 and "undrained every server" in done.stderr, done.stderr
    wait_for_line(follow, "undrained: leasing again")  # written after the follow started
    follow.terminate()
    assert follow.wait(30) == 0

    drained = civic.json("server", "drain", server_id[:6])
    assert drained == {"draining": True, "servers": [server_id], "project": False}
    assert civic("server", "undrain", server_id).returncode == 0
    fails(civic("server", "drain", "ffffffff"), 3, "no server 'ffffffff'")

    logs = civic.json("server", "logs", "-n", "100")
    messages = [e["message"] for e in logs]
    assert any(m.startswith("listening on") for m in messages)
    assert {e["server_id"] for e in logs} == {server_id} and {e["level"] for e in logs} <= {
        "INFO", "WARNING", "ERROR"}
    done = civic("server", "logs", "-n", "2", "--server", server_id[:8])
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2, done.stdout
    assert server_id[:8] in done.stdout

    server.terminate()
    assert server.wait(60) == 0
    assert civic.json("server", "servers") == []
    gone = civic.json("server", "servers", "--all")
    assert gone[0]["stopped_at"] and not gone[0]["alive"]
    assert json.loads(civic("server", "logs", "-n", "1", "--json").stdout)[0]["message"] == \
        "stopped"
