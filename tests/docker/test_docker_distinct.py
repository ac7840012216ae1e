"""Liars in the Docker runtime: citizen containers whose compiler lies, spawned the way one
volunteer would spawn them, beside honest containers — no wrong result may be verified.

Every container of one `civic citizen spawn` gets this machine's host key; the honest ones are
spawned with host keys of their own (CIVIC_HOST_KEY), as if they ran on other machines.
"""

from __future__ import annotations

import json
import string
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from civic_cli import ALPHABET, next_letter
from docker_objects import remove_instance

from civic.deploy.images import CITIZEN_IMAGE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultkit import Cluster, wait_until  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

# A compiler that lies: whatever it is asked to build answers "z" for every letter.
LYING_CC = """\
#!/bin/sh
out=a.out
while [ $# -gt 0 ]; do
    if [ "$1" = -o ]; then out=$2; shift; fi
    shift
done
cat > "$out" <<'EOF'
#!/bin/sh
exec python3 -c 'import json, sys
records = json.load(open(sys.argv[1]))
json.dump([{"original_letter": r["letter"], "letter": "z"} for r in records], open(sys.argv[2], "w"))' "$1" "$2"
EOF
chmod +x "$out"
"""
LETTERS = string.ascii_lowercase[:12]


class Fleet:
    """A server on 127.0.0.1 and citizen containers spawned by several `civic` commands."""

    def __init__(self, cluster: Cluster, engine: Any, instance: str, liar_image: str) -> None:
        self.cluster, self.engine, self.instance = cluster, engine, instance
        self.liar_image = liar_image

    def volunteer(self, name: str) -> str:
        done = self.cluster.civic("volunteer", "add", name)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def spawn(self, prefix: str, count: int, *, host: str, token: str, liar: bool = False
              ) -> None:
        civic = self.cluster.civic
        civic.env.update(CIVIC_INSTANCE=self.instance, CIVIC_TOKEN=token, CIVIC_HOST_KEY=host)
        image = ["--image", self.liar_image] if liar else []
        done = civic("citizen", "spawn", "--runtime", "docker", "--count", str(count),
                     "--network", "host", "--memory", "512m", "--prefix", prefix, *image,
                     self.cluster.address, timeout=300)
        assert done.returncode == 0, done.stderr

    def connected(self, count: int) -> None:
        wait_until(lambda: len(self.cluster.sql("SELECT 1 FROM citizens WHERE connected"))
                   == count, 120, f"{count} citizen containers connected")

    def compute(self, distinct: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The letters, computed with ``distinct``: (each duty's canonical result, each
        valid replica's citizen, host and volunteer)."""
        path = self.cluster.root / f"letters-{distinct}.csv"
        path.write_text("letter\n" + "\n".join(LETTERS) + "\n")
        ds = self.cluster.import_dataset("alphabet", path, "--distinct", distinct)["id"]
        self.cluster.wait_finished(ds, 300)
        duties = self.cluster.sql("SELECT id, state::text, canonical::jsonb FROM duties "
                                  "WHERE dataset_id = %s ORDER BY first_record", (ds,))
        valid = self.cluster.sql(
            """SELECT r.duty_id, c.name, r.host, v.name AS volunteer
               FROM replicas r JOIN duties u ON u.id = r.duty_id
               JOIN citizens c ON c.id = r.citizen_id JOIN volunteers v ON v.id = r.volunteer_id
               WHERE u.dataset_id = %s AND r.state = 'valid'""", (ds,))
        return duties, valid


@pytest.fixture(scope="module")
def fleet(engine: Any, local: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Fleet]:
    instance = f"civic-test-{uuid.uuid4().hex[:8]}"
    context = tmp_path_factory.mktemp("liar-image")
    (context / "cc").write_text(LYING_CC)
    (context / "cc").chmod(0o755)
    (context / "Dockerfile").write_text(f"FROM {CITIZEN_IMAGE}\nCOPY cc /usr/local/bin/cc\n")
    liar_image = f"civic-test-liar:{instance}"
    engine.images.build(path=str(context), tag=liar_image, network_mode="host", rm=True)
    cluster = Cluster(tmp_path_factory.mktemp("docker-distinct"))
    try:
        assert cluster.url
        cluster.start_server()
        cluster.add_model(ALPHABET)
        yield Fleet(cluster, engine, instance, liar_image)
    finally:
        remove_instance(engine, instance)
        cluster.close()
        engine.images.remove(liar_image, force=True)


def wrong(duties: list[dict[str, Any]]) -> list[Any]:
    return [d for d, letter in zip(duties, LETTERS)
            if d["state"] != "done"
            or d["canonical"] != [{"original_letter": letter, "letter": next_letter(letter)}]]


def test_liars_in_containers_of_one_host_or_one_volunteer_verify_nothing(
        fleet: Fleet, figures: dict[str, Any]) -> None:
    alice, bob, mallory = (fleet.volunteer(n) for n in ("alice", "bob", "mallory"))
    fleet.spawn("honest-a", 1, host="machine-a", token=alice)
    fleet.spawn("honest-b", 1, host="machine-b", token=bob)
    # One volunteer's machine: two containers of one spawn, one host key, a lying compiler.
    fleet.spawn("liar", 2, host="machine-m", token=mallory, liar=True)
    fleet.connected(4)

    duties, valid = fleet.compute("host")
    figures.update(host_wrong=f"{len(wrong(duties))}/{len(LETTERS)}")
    assert wrong(duties) == [], duties
    by_duty: dict[int, list[str]] = {}
    for replica in valid:
        by_duty.setdefault(replica["duty_id"], []).append(replica["host"])
    assert all(len(hosts) == len(set(hosts)) for hosts in by_duty.values()), by_duty
    assert not [r for r in valid if r["name"].startswith("liar")]

    # The same volunteer now also on two more machines: distinct hosts no longer stop it,
    # distinct volunteers do.
    fleet.spawn("liar-far", 1, host="machine-n", token=mallory, liar=True)
    fleet.spawn("liar-farther", 1, host="machine-o", token=mallory, liar=True)
    fleet.connected(6)
    duties, valid = fleet.compute("volunteer")
    figures.update(volunteer_wrong=f"{len(wrong(duties))}/{len(LETTERS)}",
                   mallory_valid=sum(r["volunteer"] == "mallory" for r in valid))
    assert wrong(duties) == [], duties
    assert not [r for r in valid if r["volunteer"] == "mallory"]
    rows = json.loads(fleet.cluster.civic("volunteer", "list", "--json").stdout)
    mallory_row = next(r for r in rows if r["name"] == "mallory")
    assert mallory_row["valid"] == 0 and mallory_row["citizens"] == 4
