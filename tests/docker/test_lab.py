"""A lab installs the server in containers, volunteers spawn citizen containers — for real."""

from __future__ import annotations

import json
import socket
import string
import time
import urllib.request
from typing import Any

import pytest
from civic_cli import ALPHABET, Civic, free_port, next_letter
from docker_objects import leftovers
from prometheus_client.parser import text_string_to_metric_families

from civic import __version__

# The first test also pays for the local base images on a fresh machine (a few minutes).
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]


def ok(done: Any) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def wait_until(check: Any, timeout: float = 180, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_install_compute_export_and_uninstall(lab: Civic, engine: Any, local: dict[str, str]
                                              ) -> None:
    port, db_port, web_port = free_port(), free_port(), free_port()
    install = ["server", "install", "--network", "host", "--port", str(port),
               "--db-port", str(db_port), "--postgres-image", local["postgres"],
               "--web", f"127.0.0.1:{web_port}"]
    assert f"dashboard: http://127.0.0.1:{web_port}/" in ok(lab(*install, timeout=300))
    again = lab(*install, timeout=300)  # safe to repeat: reports what exists
    assert again.returncode == 0 and "exists" in again.stderr, again.stderr
    assert (lab.home / "config.yaml").stat().st_mode & 0o777 == 0o600

    ok(lab("model", "add", str(ALPHABET)))
    # Four containers of one machine share its host key: distinct by citizen here.
    ok(lab("dataset", "import", "alphabet", str(ALPHABET / "letters.csv"), "--distinct",
           "citizen"))
    lab.env["CIVIC_TOKEN"] = ok(lab("server", "token")).strip()  # handed to volunteers
    # As a volunteer types it: a server on this machine's loopback is reached via the host network.
    ok(lab("citizen", "spawn", "--count", "4", f"127.0.0.1:{port}"))
    citizens = lab.json("citizen", "list")
    assert len(citizens) == 4
    assert {engine.containers.get(c["container"]).attrs["HostConfig"]["NetworkMode"]
            for c in citizens} == {"host"}

    def finished() -> bool:
        status = lab.json("server", "status")
        return status["duties"]["done"] == 26 and status
    status = wait_until(finished, what="26 verified duties")
    assert {c["role"]: c["state"] for c in status["containers"]} == {
        "postgres": "running", "server": "running"}
    assert status["citizens_connected"] == 4
    assert status["dashboard"] == f"http://127.0.0.1:{web_port}/"

    # The installed server serves /metrics beside it (`server run --web` in its container).
    with urllib.request.urlopen(f"{status['dashboard']}metrics", timeout=30) as reply:
        metrics = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    done = {s.labels["state"]: s.value for s in metrics["civic_duties"].samples
            if s.labels["model"] == "alphabet"}
    assert done["done"] == 26 and done["pending"] == 0
    assert [s.value for s in metrics["civic_citizens_connected"].samples] == [4]
    assert [s.labels["version"] for s in metrics["civic_server_info"].samples] == [__version__]

    rows = [json.loads(line) for line in
            ok(lab("results", "export", "alphabet", "--format", "jsonl")).splitlines()]
    assert len(rows) == 26
    for row in rows:
        letter = string.ascii_lowercase[row["record"]]
        assert (row["original_letter"], row["letter"]) == (letter, next_letter(letter))

    ok(lab("citizen", "remove", "--all"))
    ok(lab("server", "uninstall", "--purge", "--yes"))
    assert leftovers(engine, lab.instance) == []  # type: ignore[attr-defined]


def test_citizen_container_is_confined(lab: Civic, engine: Any) -> None:
    # Nothing listens on this port: the citizen keeps retrying, which is all this test needs.
    ok(lab("citizen", "spawn", "--count", "1", "--network", "host", "--memory", "300m",
           "--pids", "64", "--cpus", "0.5", f"127.0.0.1:{free_port()}"))
    (citizen,) = lab.json("citizen", "list")
    container = engine.containers.get(citizen["container"])
    wait_until(lambda: container.reload() or container.status == "running", 30, "running")

    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    # Every capability dropped but the four the agent needs to run models as another user.
    assert host["CapDrop"] == ["ALL"]
    assert sorted(c.removeprefix("CAP_") for c in host["CapAdd"]) == [
        "CHOWN", "KILL", "SETGID", "SETUID"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 300 * 1024 * 1024
    assert host["PidsLimit"] == 64
    assert host["NanoCpus"] == 500_000_000
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert container.attrs["Config"]["User"] == "0"  # the agent; its models run as 10001
    assert container.labels["civic.version"] == __version__
    args = container.attrs["Args"]
    assert args[args.index("--memory") + 1] == str(300 * 1024 * 1024)  # what fits, for the hello
    assert args[args.index("--model-user") + 1] == "10001"
    assert "--host-key" in args

    # And from the inside: the agent has those four capabilities and nothing more, the model
    # user none; the root filesystem refuses writes; /civic (the citizen's own volume:
    # credential, bundle cache) is closed to the model user; /tmp is a tmpfs.
    def capeff(user: str) -> str:
        done = container.exec_run(["sh", "-c", "grep CapEff /proc/self/status"], user=user)
        return done.output.decode().split()[-1]
    assert capeff("0") == "00000000000000e1"  # CHOWN, KILL, SETGID, SETUID
    assert capeff("10001") == "0000000000000000"
    assert container.exec_run(["sh", "-c", "touch /usr/x"]).exit_code != 0
    assert container.exec_run(["sh", "-c", "touch /civic/x /tmp/x"]).exit_code == 0
    assert container.exec_run(["sh", "-c", "ls /civic"], user="10001").exit_code != 0


def test_an_image_that_cannot_be_pulled_is_a_clear_error_and_creates_nothing(
        lab: Civic, engine: Any) -> None:
    # The "registry" is a closed port on 127.0.0.1: the pull fails at once, on loopback only.
    done = lab("citizen", "spawn", "--count", "2", "--network", "host",
               "--image", "127.0.0.1:9/civic-test/no-such-image:1", "127.0.0.1:9")
    assert done.returncode == 8, done.stderr
    assert "cannot be pulled" in done.stderr and "--image" in done.stderr
    assert "Traceback" not in done.stderr
    assert leftovers(engine, lab.instance) == []  # type: ignore[attr-defined]

    done = lab("server", "install", "--network", "host", "--port", str(free_port()),
               "--db-port", str(free_port()), "--postgres-image",
               "127.0.0.1:9/civic-test/no-such-pg:1", timeout=300)
    assert done.returncode == 8, done.stderr
    assert "127.0.0.1:9/civic-test/no-such-pg:1" in done.stderr and "Traceback" not in done.stderr
    assert leftovers(engine, lab.instance) == []  # type: ignore[attr-defined]


def test_no_engine_is_a_clear_error(tmp_path: Any) -> None:
    lost = Civic(tmp_path / "home", DOCKER_HOST="unix:///nonexistent/docker.sock")
    done = lost("citizen", "list")
    assert done.returncode == 8
    assert "no Docker engine answers" in done.stderr and "Traceback" not in done.stderr
    done = lost("citizen", "spawn", "--count", "1", "127.0.0.1:9", "--runtime", "docker")
    assert done.returncode == 8


def test_install_refuses_a_taken_port_and_a_foreign_name(lab: Civic, engine: Any,
                                                         local: dict[str, str]) -> None:
    port, db_port = free_port(), free_port()
    install = ["server", "install", "--network", "host", "--port", str(port),
               "--db-port", str(db_port), "--postgres-image", local["postgres"],
               "--web", f"127.0.0.1:{free_port()}"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", db_port))
        taken.listen()
        done = lab(*install, timeout=300)
    assert done.returncode == 5, done.stderr
    assert f"port {db_port}" in done.stderr and "Traceback" not in done.stderr
    assert leftovers(engine, lab.instance) == []  # type: ignore[attr-defined]

    # A container that merely has the name CIVIC wants is not taken over.
    stranger = engine.containers.create(local["python"], ["true"],
                                        name=f"{lab.instance}-postgres")  # type: ignore[attr-defined]
    try:
        done = lab(*install, timeout=300)
        assert done.returncode == 8, done.stderr
        assert "is not this CIVIC instance's" in done.stderr
        assert leftovers(engine, lab.instance) == []  # type: ignore[attr-defined]
    finally:
        stranger.remove(force=True)
