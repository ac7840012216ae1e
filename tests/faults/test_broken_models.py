"""Drill 5: broken models through a real server and two process citizens. Each broken duty must
end 'failed' with a useful error, and the citizens must live on and compute a good dataset next."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import Cluster, numbers, square_model, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

MARKER = f"civicdrill{uuid.uuid4().hex[:12]}"  # in the command line of the forked sleeps

# name -> (files, run command, what the error must say); each with replication 1,
# max_attempts 2 (so both citizens try) and a 2 s timeout
BROKEN: dict[str, tuple[dict[str, str], str, list[str]]] = {
    "crash": ({"crash.sh": "echo 'drill: the model fell over on purpose' >&2\nexit 3\n"},
              "sh crash.sh {input} {output}", ["exited with code 3"]),
    "hang": ({"hang.py": "import time\ntime.sleep(1000)\n"},
             "python3 hang.py {input} {output}", ["timed out"]),
    "badjson": ({"bad.py": "import sys\nopen(sys.argv[2], 'w').write('{\"n\": 1, oops')\n"},
                "python3 bad.py {input} {output}", ["not valid JSON"]),
    "huge": ({"huge.py": "import json, sys\n"
                         "json.dump(['x' * 1024] * (9 * 1024), open(sys.argv[2], 'w'))\n"},
             "python3 huge.py {input} {output}", ["8388608 byte limit"]),
    "forker": ({"fork.sh": "for i in $(seq 50); do (exec -a 'sleep-" + MARKER
                           + "' sleep 1000) & done\nsleep 1000\n"},
               "bash fork.sh {input} {output}", ["timed out"]),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, list[int]]]:
    """One server and `civic citizen spawn --count 2` for every broken model of this module."""
    cluster = Cluster(tmp_path_factory.mktemp("broken"))
    try:
        assert cluster.url
        cluster.start_server()
        cluster.add_model(square_model(cluster.root / "good", "good"))
        cluster.spawn(2, prefix="sturdy")
        spawn = cluster.procs[-1]
        agents = wait_until(lambda: len(cluster.children(spawn)) == 2 and cluster.children(spawn),
                            30, "two spawned citizens")
        yield cluster, agents
    finally:
        cluster.close()


def write_model(directory: Path, name: str, run: str, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True)
    (directory / "civic.yaml").write_text(f"name: {name}\nrun: {run}\nreplication: 1\n"
                                          "max_attempts: 2\ntimeout: 2\n")
    for file, text in files.items():
        (directory / file).write_text(text)
    return directory


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_model_fails_the_duty_and_spares_the_citizen(
        broken: tuple[Cluster, list[int]], kind: str, figures: dict[str, Any]) -> None:
    cluster, agents = broken
    files, run, needles = BROKEN[kind]
    cluster.add_model(write_model(cluster.root / kind, kind, run, files))
    ds = cluster.import_dataset(kind, numbers(cluster.root / f"{kind}.json", 1))["id"]
    final = cluster.wait_finished(ds, 60)
    assert (final["failed"], final["done"]) == (1, 0), final

    listed = next(d for d in cluster.cli_json("dataset", "list") if d["id"] == ds)
    assert (listed["failed"], listed["pending"], listed["done"]) == (1, 0, 0), listed
    duty = cluster.sql("SELECT id, state::text AS state, failures, error FROM duties "
                       "WHERE dataset_id = %s", (ds,))[0]
    replicas = cluster.sql("SELECT state::text AS state, error, stderr_tail FROM replicas "
                           "WHERE duty_id = %s ORDER BY id", (duty["id"],))
    figures.update(error=duty["error"], failures=duty["failures"],
                   replicas=[r["state"] for r in replicas])
    assert duty["state"] == "failed" and duty["failures"] == 2, duty  # both citizens tried
    for needle in needles:
        assert needle in (duty["error"] or ""), duty
        assert all(needle in (r["error"] or "") for r in replicas), replicas
    assert [r["state"] for r in replicas] == ["error", "error"], replicas
    if kind == "crash":  # the model's own words are kept for the researcher
        assert all("the model fell over on purpose" in r["stderr_tail"] for r in replicas)
    if kind == "forker":  # no stray child outlives the duty
        def strays() -> str:
            return subprocess.run(["pgrep", "-af", MARKER], capture_output=True,
                                  text=True).stdout
        left = ""
        try:
            wait_until(lambda: not strays(), 10, "the forked sleeps to be gone", 0.2)
        except AssertionError:
            left = strays()
            for line in left.splitlines():  # clean up these strays, by their ids
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(line.split()[0]), signal.SIGKILL)
        figures["stray_sleeps_left"] = len(left.splitlines())
        assert not left, f"children of the timed-out model survive:\n{left[:2000]}"

    # the citizens are the same processes, and they compute the next, good dataset
    assert all(Path(f"/proc/{pid}").exists() for pid in agents), cluster.diagnostics()
    good = cluster.import_dataset("good", numbers(cluster.root / f"good-{kind}.json", 4))["id"]
    assert cluster.wait_finished(good, 60)["done"] == 4
    rows = cluster.sql("SELECT first_record, canonical FROM duties WHERE dataset_id = %s",
                       (good,))
    assert sorted((r["first_record"], json.dumps(r["canonical"])) for r in rows) == [
        (n, json.dumps([{"n": n, "square": n * n}])) for n in range(4)]
    assert all(Path(f"/proc/{pid}").exists() for pid in agents), cluster.diagnostics()
    assert cluster.children(cluster.procs[-1]) == agents
