"""Drill 7: models are contained on a process citizen. Each attack model runs through a real
server on two real citizens, in each way a volunteer may run them:

- ``root``: the agent runs as root (as CI does); its models run as a user of their own.
- ``user``: the agent runs as an unprivileged user (nobody), so its models share its uid;
  Landlock confines their writes to the duty directory.
- ``user-nolandlock``: the same without Landlock (an older kernel): only the cache fingerprint
  stands between a model and the bundle cache.

Each model declares replication 1, and each citizen has a host key of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import (CIVIC, ESCAPER, HOG, HOLDER, NOBODY, POISONER, READER, UNSENDABLE,
                      WRITER, Cluster, Proc, square_model, wait_until, with_marker)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900),
              pytest.mark.skipif(os.geteuid() != 0, reason="starts citizens as root and as "
                                                          "nobody: needs root")]

MODES = ["root", "user"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One server for every drill of this module; each drill starts citizens of its own."""
    cluster = Cluster(tmp_path_factory.mktemp("containment"))
    try:
        assert cluster.url
        cluster.start_server()
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def citizens(lab: Cluster, mode: str, tag: str, count: int = 2, **env: str
             ) -> Iterator[list[Proc]]:
    """``count`` citizen agents run the way ``mode`` says, each with a host key of its own."""
    user = None if mode == "root" else NOBODY
    args = ["--no-landlock"] if mode == "user-nolandlock" else []
    names = [f"{tag}-{mode}-{i}" for i in range(1, count + 1)]
    procs = [lab.agent(name, user=user, args=args, CIVIC_HOST_KEY=name, DRILL_NAME=name, **env)
             for name in names]
    try:
        for proc in procs:
            proc.wait_for("connected to", 60)
        yield procs
    finally:
        lab.stop_processes(procs)


def compute(lab: Cluster, name: str, records: list[dict[str, Any]], timeout: float = 120
            ) -> list[dict[str, Any]]:
    """Import ``records`` for model ``name``, wait until none is pending; one row per replica
    (duty state, output, error, stderr tail, citizen name), in record order."""
    path = lab.root / f"{name}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(records))
    ds = lab.import_dataset(name, path)["id"]
    lab.wait_finished(ds, timeout)
    return lab.sql("""SELECT u.first_record, u.state::text AS duty, u.canonical, r.output,
                             r.state::text AS state, r.error, r.stderr_tail, c.name AS citizen
                      FROM duties u JOIN replicas r ON r.duty_id = u.id
                      JOIN citizens c ON c.id = r.citizen_id
                      WHERE u.dataset_id = %s ORDER BY u.first_record, r.id""", (ds,))


def alive(procs: list[Proc]) -> bool:
    return all(p.alive for p in procs)


# --- the bundle cache -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [*MODES, "user-nolandlock"])
def test_a_model_cannot_poison_the_bundle_cache(lab: Cluster, mode: str,
                                                figures: dict[str, Any]) -> None:
    victim = f"victim-{mode}"
    square = (square_model(lab.root / "sq", "sq", sleep=0.3) / "model.py").read_text()
    victim_sha = lab.add_drill_model(victim, {"model.py": square},
                                     "python3 model.py {input} {output}")
    poisoner = f"poisoner-{mode}"
    poisoner_sha = lab.add_drill_model(poisoner, {"model.py": POISONER},
                                       "python3 model.py {input} {output}")
    with citizens(lab, mode, "cache") as agents:
        homes = [lab.home_of(p.name, None if mode == "root" else NOBODY) for p in agents]
        targets = [f"{base}/{victim_sha}/model.py" for base in
                   ("..", "../../bundles", *(f"{home}/bundles" for home in homes))]
        targets += [f"{base}/{poisoner_sha}/POISONED" for base in
                    ("..", "../../bundles", *(f"{home}/bundles" for home in homes))]

        def right(rows: list[dict[str, Any]]) -> int:
            return sum(r["output"] == [{"n": r["first_record"], "square": r["first_record"] ** 2}]
                       for r in rows)

        first = compute(lab, victim, [{"n": n} for n in range(4)])
        assert right(first) == 4, first
        poisons = compute(lab, poisoner, [{"n": n, "targets": targets} for n in range(6)])
        again = compute(lab, victim, [{"n": n} for n in range(6)])
        more = compute(lab, poisoner, [{"n": n, "targets": targets} for n in range(4)])
        final = compute(lab, victim, [{"n": n} for n in range(6)])
        logs = "".join(p.text() for p in agents)
        assert alive(agents)

    figures.update(mode=mode, victim_right=f"{right(first + again + final)}/16",
                   poison_writes_landed=sum(r["output"][0]["wrote"] for r in poisons + more
                                            if r["output"]),
                   refetched=logs.count("changed on disk"),
                   victim_citizens=sorted({r["citizen"] for r in again + final}))
    assert all(r["state"] == "valid" for r in poisons + more), poisons + more
    assert not [r for r in poisons + more if r["output"][0]["seen"]], \
        "a duty saw what an earlier duty of its bundle wrote"
    assert right(again) == 6 and right(final) == 6, again + final
    assert {r["citizen"] for r in again + final} == {p.name for p in agents}, \
        "every citizen should have computed the victim after the poisoner"


# --- the citizen's credential and the join token ----------------------------------------------

@pytest.mark.parametrize("mode", [*MODES, "user-nolandlock"])
def test_a_model_cannot_read_the_credential_or_the_token(lab: Cluster, mode: str,
                                                        figures: dict[str, Any]) -> None:
    name = f"reader-{mode}"
    lab.add_drill_model(name, {"model.py": READER}, "python3 model.py {input} {output}")
    user = None if mode == "root" else NOBODY
    homes = [lab.home_of(f"ident-{mode}-{i}", user) for i in (1, 2)]
    with citizens(lab, mode, "ident", DRILL_HOMES=":".join(map(str, homes))) as agents:
        spawned: list[Path] = []
        if mode == "root":  # and citizens of `civic citizen spawn`, the token in its environment
            lab.spawn(1, prefix=f"spawned-{mode}", CIVIC_HOST_KEY=f"spawned-{mode}")
            spawned = [lab.home / "citizens" / f"spawned-{mode}-1"]
            wait_until(lambda: (spawned[0] / "identity.json").exists(), 60, "spawned citizen")
        rows = compute(lab, name, [{"n": n} for n in range(9)])
        if spawned:  # the spawned agent got its token on stdin, and CIVIC_HOST_KEY
            (agent,) = lab.children(lab.procs[-1])
            environ = Path(f"/proc/{agent}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith(b"CIVIC_TOKEN=")]
            assert f"CIVIC_HOST_KEY=spawned-{mode}".encode() in environ
        secrets = [json.loads((home / "identity.json").read_text())["secret"]
                   for home in homes + spawned]
        where = {r["citizen"] for r in rows}
        alive_after = alive(agents)
        if spawned:
            lab.stop_processes([lab.procs[-1]])

    stored = json.dumps([[r["output"], r["error"], r["stderr_tail"]] for r in rows])
    reads = [v for r in rows if r["output"] for k, v in r["output"][0]["found"].items()
             if k != "env"]
    leaked = [s for s in secrets if s in stored]
    figures.update(mode=mode, reads=len(reads),
                   denied=sum(v.startswith("denied") for v in reads),
                   citizens=sorted(where), secrets_read=f"{len(leaked)}/{len(secrets)}")
    assert all(r["state"] == "valid" for r in rows), rows
    assert where == {p.name for p in agents} | {f"spawned-{mode}-1" for _ in spawned}, where
    assert lab.token not in stored, "the join token reached a model's output"
    if mode == "root":  # with the citizen's own uid a model can read its files: not contained
        assert not leaked, "a citizen's secret reached a model's output"
    assert not [k for r in rows for k in json.loads(r["output"][0]["found"]["env"])
                if k.startswith("CIVIC_")]
    assert alive_after


# --- $HOME, TMPDIR, /tmp ----------------------------------------------------------------------

def left_behind(marker: str, tops: list[str]) -> list[str]:
    """Files or directories named with ``marker`` anywhere under ``tops``."""
    found = []
    for top in tops:
        for directory, dirs, files in os.walk(top):
            found += [os.path.join(directory, n) for n in dirs + files if marker in n]
    return found


@pytest.mark.parametrize("mode", MODES)
def test_writes_to_home_and_tmp_stay_in_the_duty(lab: Cluster, mode: str,
                                                 figures: dict[str, Any]) -> None:
    name = f"writer-{mode}"
    marker = f"civicdrill{uuid.uuid4().hex[:10]}"
    lab.add_drill_model(name, {"model.py": WRITER}, "python3 model.py {input} {output}")
    # As the citizen's own user, a model shares /dev/shm with that user's other processes.
    shared = ["HOME", "TMPDIR", "/tmp", "/var/tmp"] + (["/dev/shm"] if mode == "root" else [])
    tops = ["/tmp", "/var/tmp"] + (["/dev/shm"] if mode == "root" else [])
    with citizens(lab, mode, "writes", DRILL_MARKER=marker, DRILL_SHARED=":".join(shared)
                  ) as agents:
        rows = compute(lab, name, [{"n": n} for n in range(6)])
        assert alive(agents)
    outputs = [r["output"][0] for r in rows if r["output"]]
    leftovers = left_behind(marker, tops)
    figures.update(mode=mode, **{d: sorted({o[d].split(":")[0] for o in outputs})
                                 for d in ("/tmp", "/var/tmp", "/dev/shm")},
                   left_behind=len(leftovers), seen_earlier=sum(len(o["earlier"]) for o in outputs))
    for leftover in left_behind(marker, ["/dev/shm"]):  # as the citizen's user: its own files
        os.unlink(leftover)
    assert len(outputs) == 6 and all(r["state"] == "valid" for r in rows), rows
    assert all(o["home_inside"] and o["tmp_inside"] for o in outputs), outputs
    assert not [o for o in outputs if o["earlier"]], "a duty saw what an earlier one wrote"
    assert all(o["HOME"] == o["TMPDIR"] == "written" for o in outputs), outputs
    assert leftovers == []


# --- processes --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_no_process_outlives_its_duty(lab: Cluster, mode: str, figures: dict[str, Any]) -> None:
    name = f"escaper-{mode}"
    marker = f"civicdrill{uuid.uuid4().hex[:10]}"
    lab.add_drill_model(name, {"model.py": ESCAPER}, "python3 model.py {input} {output}",
                        extra="timeout: 20\n")
    with citizens(lab, mode, "escape", DRILL_MARKER=marker) as agents:
        rows = compute(lab, name, [{"n": n} for n in range(4)])
        left = ""
        try:
            wait_until(lambda: not with_marker(marker), 10, "the escapees to be gone", 0.2)
        except AssertionError:
            left = "\n".join(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
                             for pid in with_marker(marker))
        figures.update(mode=mode, duties=[r["duty"] for r in rows],
                       errors=sorted({r["error"] for r in rows if r["error"]}),
                       survivors=len(left.splitlines()))
        for pid in with_marker(marker):  # clean up after a failed drill, by id
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        assert alive(agents)
    assert [r["duty"] for r in rows] == ["done"] * 4, rows
    assert not left, f"processes of finished duties survive:\n{left}"


@pytest.mark.parametrize("mode", MODES)
def test_a_child_holding_stdout_does_not_time_the_duty_out(lab: Cluster, mode: str,
                                                           figures: dict[str, Any]) -> None:
    name = f"holder-{mode}"
    marker = f"civicdrill{uuid.uuid4().hex[:10]}"
    lab.add_drill_model(name, {"hold.sh": HOLDER}, "bash hold.sh {input} {output}",
                        extra="timeout: 8\n")
    with citizens(lab, mode, "holder", DRILL_MARKER=marker) as agents:
        rows = compute(lab, name, [{"n": n} for n in range(3)])
        gone = not with_marker(marker) or wait_until(lambda: not with_marker(marker), 10,
                                                     "the holders to be gone", 0.2)
        for pid in with_marker(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        assert alive(agents)
    figures.update(mode=mode, duties=[r["duty"] for r in rows],
                   errors=sorted({r["error"] for r in rows if r["error"]}))
    assert [r["duty"] for r in rows] == ["done"] * 3, rows
    assert gone


# --- memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_the_memory_limit_is_enforced(lab: Cluster, mode: str, figures: dict[str, Any]) -> None:
    name = f"hog-{mode}"
    lab.add_drill_model(name, {"model.py": HOG}, "python3 model.py {input} {output}",
                        extra="memory: 256m\n")
    fine = f"fine-{mode}"
    square = (square_model(lab.root / "sq", "sq") / "model.py").read_text()
    lab.add_drill_model(fine, {"model.py": square}, "python3 model.py {input} {output}",
                        extra="memory: 256m\n")
    with citizens(lab, mode, "memory") as agents:
        hogs = compute(lab, name, [{"n": n} for n in range(2)])
        pids = [p.pid for p in agents]
        after = compute(lab, fine, [{"n": n} for n in range(4)])
        assert alive(agents) and [p.pid for p in agents] == pids
    figures.update(mode=mode, error=hogs[0]["error"])
    assert [r["state"] for r in hogs] == ["error", "error"], hogs
    assert all("memory" in r["error"] and "256 MiB" in r["error"] for r in hogs), hogs
    assert [r["duty"] for r in after] == ["done"] * 4, after


# --- outputs the wire cannot carry ------------------------------------------------------------

def test_outputs_the_wire_cannot_carry_are_replica_errors(lab: Cluster,
                                                          figures: dict[str, Any]) -> None:
    name = "unsendable"
    lab.add_drill_model(name, {"model.py": UNSENDABLE}, "python3 model.py {input} {output}")
    kinds = ["inf", "ok", "surrogate", "ok", "big", "ok"]
    with citizens(lab, "root", "wire") as agents:
        pids = [p.pid for p in agents]
        rows = compute(lab, name, [{"n": n, "kind": k} for n, k in enumerate(kinds)], 180)
        logs = "".join(p.text() for p in agents)
        assert alive(agents) and [p.pid for p in agents] == pids
    by_kind = {kinds[r["first_record"]]: r for r in rows if kinds[r["first_record"]] != "ok"}
    figures.update({k: r["error"] for k, r in by_kind.items()},
                   reconnects=logs.count("connection lost"))
    assert [r["duty"] for r in rows if kinds[r["first_record"]] == "ok"] == ["done"] * 3, rows
    assert all(r["duty"] == "failed" and r["state"] == "error" for r in by_kind.values()), rows
    assert "out of range" in by_kind["inf"]["error"], by_kind["inf"]
    assert "cannot be sent" in by_kind["surrogate"]["error"], by_kind["surrogate"]
    assert "surrogate" in by_kind["surrogate"]["error"], by_kind["surrogate"]
    assert "cannot be sent" in by_kind["big"]["error"], by_kind["big"]
    assert "limit" in by_kind["big"]["error"], by_kind["big"]
    assert "connection lost" not in logs, logs[-3000:]


# --- refused citizens -------------------------------------------------------------------------

def test_spawn_exits_7_when_every_citizen_is_refused(lab: Cluster) -> None:
    spawn = lab.start("spawn-refused", [CIVIC, "citizen", "spawn", "--runtime", "process",
                                        "--count", "2", "--prefix", "refused", lab.address],
                      CIVIC_TOKEN="not-the-join-token")
    try:
        spawn.popen.wait(60)
    finally:
        lab.stop_processes([spawn])
    assert spawn.popen.returncode == 7, spawn.tail()
    assert spawn.text().count("the server refused this citizen") == 2, spawn.tail()
