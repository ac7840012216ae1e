"""The containment drill in the Docker runtime: the attack models of tests/faults run on two
citizen containers (``civic citizen spawn --runtime docker``, host network) of a real server
started on this machine's loopback. (Named apart from tests/faults/test_containment.py: pytest
imports test modules by their base name.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_objects import remove_instance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultkit import (ESCAPER, HOG, POISONER, READER, UNSENDABLE, WRITER,  # noqa: E402
                      Cluster, square_model, wait_until, with_marker)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

MODEL_USER = 10001
WORK = "/tmp/work"


class Drill:
    """A server on 127.0.0.1 and two citizen containers of one test instance."""

    def __init__(self, cluster: Cluster, engine: Any, instance: str) -> None:
        self.cluster, self.engine, self.instance = cluster, engine, instance
        self.containers: list[Any] = []

    def spawn(self) -> None:
        civic = self.cluster.civic
        civic.env.update(CIVIC_INSTANCE=self.instance, CIVIC_TOKEN=self.cluster.token,
                         CIVIC_HOST_KEY=f"docker-{self.instance}")
        done = civic("citizen", "spawn", "--runtime", "docker", "--count", "2", "--network",
                     "host", "--memory", "1g", "--prefix", "box", self.cluster.address,
                     timeout=300)
        assert done.returncode == 0, done.stderr
        listed = json.loads(civic("citizen", "list", "--json").stdout)
        self.containers = [self.engine.containers.get(c["container"]) for c in listed]
        assert len(self.containers) == 2
        wait_until(lambda: len(self.cluster.sql(
            "SELECT 1 FROM citizens WHERE connected AND name LIKE 'box-%'")) == 2, 120,
            "two citizen containers connected")

    def model(self, name: str, files: dict[str, str], run: str, extra: str = "") -> str:
        return self.cluster.add_drill_model(name, files, run, extra)

    def compute(self, name: str, records: list[dict[str, Any]], timeout: float = 180
                ) -> list[dict[str, Any]]:
        path = self.cluster.root / f"{name}-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(records))
        ds = self.cluster.import_dataset(name, path)["id"]
        self.cluster.wait_finished(ds, timeout)
        return self.cluster.sql(
            """SELECT u.first_record, u.state::text AS duty, r.output, r.state::text AS state,
                      r.error, r.stderr_tail, c.name AS citizen
               FROM duties u JOIN replicas r ON r.duty_id = u.id
               JOIN citizens c ON c.id = r.citizen_id
               WHERE u.dataset_id = %s ORDER BY u.first_record, r.id""", (ds,))

    def sh(self, container: Any, command: str, user: str = "0") -> str:
        done = container.exec_run(["sh", "-c", command], user=user)
        return done.output.decode(errors="replace")

    def steady(self) -> list[tuple[str, int]]:
        """(start time, restart count) of each container: unchanged while none died."""
        for c in self.containers:
            c.reload()
        return [(c.attrs["State"]["StartedAt"], c.attrs["RestartCount"])
                for c in self.containers]


@pytest.fixture(scope="module")
def drill(engine: Any, local: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Drill]:
    instance = f"civic-test-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(tmp_path_factory.mktemp("docker-containment"))
    try:
        assert cluster.url
        cluster.start_server()
        ready = Drill(cluster, engine, instance)
        ready.spawn()
        yield ready
    finally:
        remove_instance(engine, instance)
        cluster.close()


def with_env(script: str, **env: str) -> str:
    """A model script with its DRILL_* settings inside (a container's models see only the
    container's environment)."""
    return "import os\n" + "".join(f"os.environ[{k!r}] = {v!r}\n" for k, v in env.items()) + script


def test_models_run_as_another_user_without_capabilities(drill: Drill, figures: dict[str, Any]
                                                         ) -> None:
    drill.model("whoami", {"model.py": """\
import json, sys
def status(pid):
    fields = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines())
    return {k: fields[k].split() for k in ("Uid", "CapEff", "CapPrm", "NoNewPrivs")}
records = json.load(open(sys.argv[1]))
json.dump([{"n": r["n"], "me": status("self"), "agent": status(1)} for r in records],
          open(sys.argv[2], "w"))
"""}, "python3 model.py {input} {output}")
    rows = drill.compute("whoami", [{"n": n} for n in range(4)])
    assert [r["state"] for r in rows] == ["valid"] * 4, [(r["error"], r["stderr_tail"])
                                                         for r in rows]
    me, agent = rows[0]["output"][0]["me"], rows[0]["output"][0]["agent"]
    figures.update(model_uid=me["Uid"][0], model_capeff=me["CapEff"][0],
                   agent_uid=agent["Uid"][0], agent_capeff=agent["CapEff"][0])
    for row in rows:
        me, agent = row["output"][0]["me"], row["output"][0]["agent"]
        assert me["Uid"] == [str(MODEL_USER)] * 4 and agent["Uid"][0] == "0"
        assert me["CapEff"] == me["CapPrm"] == ["0000000000000000"]
        assert me["NoNewPrivs"] == ["1"]
    for container in drill.containers:
        host = container.attrs["HostConfig"]
        assert sorted(host["CapAdd"]) == ["CAP_CHOWN", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"] \
            or sorted(host["CapAdd"]) == ["CHOWN", "KILL", "SETGID", "SETUID"], host["CapAdd"]
        assert host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"] is True
        assert "no-new-privileges" in host["SecurityOpt"]


def test_models_cannot_read_the_credential_or_the_token(drill: Drill, figures: dict[str, Any]
                                                       ) -> None:
    drill.model("reader", {"model.py": with_env(READER, DRILL_HOMES="/civic")},
                "python3 model.py {input} {output}")
    rows = drill.compute("reader", [{"n": n} for n in range(4)])
    secrets = [json.loads(drill.sh(c, "cat /civic/identity.json"))["secret"]
               for c in drill.containers]
    stored = json.dumps([[r["output"], r["error"], r["stderr_tail"]] for r in rows])
    found = rows[0]["output"][0]["found"]
    figures.update(identity=found["/civic"][:40], agent_environ=found.get("environ 1", "")[:40])
    assert [r["state"] for r in rows] == ["valid"] * 4, [(r["error"], r["stderr_tail"])
                                                         for r in rows]
    assert drill.cluster.token not in stored
    assert not [s for s in secrets if s in stored]
    assert found["/civic"].startswith("denied") and found["environ 1"].startswith("denied")


def test_models_cannot_poison_the_bundle_cache(drill: Drill, figures: dict[str, Any]) -> None:
    victim_sha = drill.model("dvictim", {"model.py": (square_model(
        drill.cluster.root / "sq", "sq", sleep=0.3) / "model.py").read_text()},
        "python3 model.py {input} {output}")
    poisoner_sha = drill.model("dpoisoner", {"model.py": POISONER},
                               "python3 model.py {input} {output}")
    targets = [f"{base}/{sha}/{file}" for base in ("..", "../../bundles", "/civic/bundles")
               for sha, file in ((victim_sha, "model.py"), (poisoner_sha, "POISONED"))]

    def right(rows: list[dict[str, Any]]) -> int:
        return sum(r["output"] == [{"n": r["first_record"], "square": r["first_record"] ** 2}]
                   for r in rows)

    first = drill.compute("dvictim", [{"n": n} for n in range(4)])
    poisons = drill.compute("dpoisoner", [{"n": n, "targets": targets} for n in range(6)])
    again = drill.compute("dvictim", [{"n": n} for n in range(6)])
    more = drill.compute("dpoisoner", [{"n": n, "targets": targets} for n in range(4)])
    figures.update(victim_right=f"{right(first + again)}/10",
                   poison_writes_landed=sum(r["output"][0]["wrote"] for r in poisons + more))
    assert right(first) == 4 and right(again) == 6, first + again
    assert all(r["state"] == "valid" for r in poisons + more), poisons + more
    assert not [r for r in poisons + more if r["output"][0]["seen"]]
    assert sum(r["output"][0]["wrote"] for r in poisons + more) == 0


def test_writes_to_home_and_tmp_stay_in_the_duty(drill: Drill, figures: dict[str, Any]) -> None:
    marker = f"civicdrill{uuid.uuid4().hex[:10]}"
    drill.model("dwriter", {"model.py": with_env(
        WRITER, DRILL_MARKER=marker, DRILL_SHARED="HOME:TMPDIR:/tmp:/var/tmp:/dev/shm")},
        "python3 model.py {input} {output}")
    rows = drill.compute("dwriter", [{"n": n} for n in range(6)])
    outputs = [r["output"][0] for r in rows]
    left = [drill.sh(c, f"find /tmp /var/tmp /dev/shm -name '{marker}*'")
            for c in drill.containers]
    figures.update({d: sorted({o[d].split(":")[0] for o in outputs})
                    for d in ("/tmp", "/var/tmp", "/dev/shm")}, left_behind=sum(map(len, left)))
    assert all(r["state"] == "valid" for r in rows), rows
    assert all(o["home_inside"] and o["tmp_inside"] for o in outputs), outputs
    assert all(o["HOME"] == o["TMPDIR"] == "written" for o in outputs), outputs
    assert not [o for o in outputs if o["earlier"]]
    assert left == ["", ""], left
    assert all(drill.sh(c, f"ls {WORK}") == "" for c in drill.containers)


def test_no_process_outlives_its_duty(drill: Drill, figures: dict[str, Any]) -> None:
    marker = f"civicdrill{uuid.uuid4().hex[:10]}"
    drill.model("descaper", {"model.py": with_env(ESCAPER, DRILL_MARKER=marker)},
                "python3 model.py {input} {output}", extra="timeout: 20\n")
    rows = drill.compute("descaper", [{"n": n} for n in range(4)])
    left: list[int] = []
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not with_marker(marker), 10, "escapees gone", 0.2)
    left = with_marker(marker)
    for pid in left:  # seen from the host: the containers' processes are here too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    figures.update(duties=[r["duty"] for r in rows], survivors=len(left))
    assert [r["duty"] for r in rows] == ["done"] * 4, rows
    assert left == []


def test_the_memory_limit_is_enforced(drill: Drill, figures: dict[str, Any]) -> None:
    before = drill.steady()
    drill.model("dhog", {"model.py": HOG}, "python3 model.py {input} {output}",
                extra="memory: 256m\n")
    drill.model("dfine", {"model.py": (square_model(drill.cluster.root / "sq", "sq")
                                       / "model.py").read_text()},
                "python3 model.py {input} {output}", extra="memory: 256m\n")
    hogs = drill.compute("dhog", [{"n": n} for n in range(2)])
    fine = drill.compute("dfine", [{"n": n} for n in range(4)])
    figures.update(error=hogs[0]["error"])
    assert [r["state"] for r in hogs] == ["error", "error"], hogs
    assert all("out of memory" in r["error"] and "256 MiB" in r["error"] for r in hogs), hogs
    assert [r["duty"] for r in fine] == ["done"] * 4, fine
    assert drill.steady() == before  # no container died or restarted


def test_a_model_built_on_the_citizen_runs_its_program(drill: Drill, figures: dict[str, Any]
                                                       ) -> None:
    """The build runs as the model user in the work directory; the duty copies of its result
    (in the container's tmpfs) can be executed."""
    drill.model("dbuilt", {"m.c": '#include <stdio.h>\nint main(void) { puts("[42]"); }\n'},
                "./m {input} > {output}", extra="build: cc -O2 -o m m.c\n")
    rows = drill.compute("dbuilt", [{"n": n} for n in range(4)])
    figures.update(errors=sorted({r["error"] or "" for r in rows}))
    assert [r["output"] for r in rows] == [[42]] * 4, [(r["error"], r["stderr_tail"])
                                                       for r in rows]


def test_outputs_the_wire_cannot_carry_are_replica_errors(drill: Drill,
                                                          figures: dict[str, Any]) -> None:
    drill.model("dwire", {"model.py": UNSENDABLE}, "python3 model.py {input} {output}")
    kinds = ["inf", "ok", "surrogate", "ok", "big", "ok"]
    before = drill.steady()
    rows = drill.compute("dwire", [{"n": n, "kind": k} for n, k in enumerate(kinds)])
    errors = {kinds[r["first_record"]]: r["error"] for r in rows
              if kinds[r["first_record"]] != "ok"}
    logs = "".join(c.logs().decode(errors="replace") for c in drill.containers)
    figures.update(errors, reconnects=logs.count("connection lost"))
    assert [r["duty"] for r in rows if kinds[r["first_record"]] == "ok"] == ["done"] * 3, rows
    assert "out of range" in errors["inf"] and "surrogate" in errors["surrogate"], errors
    assert "cannot be sent" in errors["big"] and "limit" in errors["big"], errors
    assert "connection lost" not in logs and drill.steady() == before  # no citizen died
