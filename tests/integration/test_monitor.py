"""``civic status`` data and ``civic duty show``'s reasons, in situations built on a real
PostgreSQL: paused and cancelled work, resting and blocked citizens, a duty needing more memory
than any citizen has, distinct volunteers used up, failed replicas with stderr, servers."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from civic import protocol as p
from civic.cli.main import main
from civic.errors import NotFound
from civic.store import catalog, monitor

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def citizens(h, url, *names, **hello):
    """Register citizens (connected now) and return their ids."""
    async def go():
        async with h.open_pool(url) as pool:
            return [(await h.call(pool, _register, name, hello)) for name in names]

    return asyncio.run(go())


async def _register(conn, name, hello):
    from civic.store import work
    citizen_id, _ = await work.register(conn, citizen_id=None, secret=None, name=name,
                                        platform="linux/amd64", address="127.0.0.1:1", **hello)
    return citizen_id


def lease_and_submit(h, url, citizen_id, count, output=None, *, error=None, exit_code=0,
                     stderr="tail"):
    """Lease ``count`` duties to a citizen and answer each (an output, or an error)."""
    async def go():
        async with h.open_pool(url) as pool:
            got = await h.lease(pool, citizen_id, count=count)
            for a in got:
                result = p.Result(a.replica_id, exit_code, output=None if error else (
                    output(a) if output else h.alphabet_output(a.input)), error=error,
                    stderr_tail=stderr, elapsed=0.25)
                from civic.server import assimilate
                await h.call(pool, assimilate.submit, citizen_id, result)
            return got

    return asyncio.run(go())


def lease_only(h, url, citizen_id, count):
    async def go():
        async with h.open_pool(url) as pool:
            return await h.lease(pool, citizen_id, count=count)

    return asyncio.run(go())


def kinds(duty):
    return [w["kind"] for w in duty["waiting"]]


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------

def test_status_counts_states_recent_work_rate_and_oldest_waiting(alphabet, database_url, h):
    one, two = citizens(h, database_url, "one", "two")
    lease_and_submit(h, database_url, one, 10)
    lease_and_submit(h, database_url, two, 10)  # duties 1-10 done by two citizens
    h.execute(database_url, "UPDATE duties SET state = 'failed', open_slots = 0, "
                            "finished_at = now(), error = 'x' WHERE id IN (11, 12)")
    h.execute(database_url, "UPDATE duties SET state = 'cancelled', open_slots = 0 "
                            "WHERE id = 26")
    # Two of the done duties finished two hours ago: counted done, not in the last hour.
    h.execute(database_url, "UPDATE duties SET finished_at = now() - interval '2 hours' "
                            "WHERE id IN (1, 2)")
    # The rate is measured over the part of the hour that had work: here 30 s.
    h.execute(database_url, "UPDATE duties SET finished_at = now() - interval '30 seconds' "
                            "WHERE id = 3")
    data = monitor.status(database_url)
    json.dumps(data)  # JSON-ready as it is
    (d,) = data["datasets"]
    assert (d["done"], d["pending"], d["failed"], d["inconclusive"], d["cancelled"]) == (
        10, 13, 2, 0, 1)
    assert d["done_last_hour"] == 8 and d["done_last_minute"] == 8
    assert d["finished_last_hour"] == 10
    assert d["rate"] == pytest.approx(10 / 30, rel=0.1)
    assert d["eta_seconds"] == pytest.approx(13 / d["rate"])
    assert d["oldest_waiting_duty"] == 13 and d["oldest_waiting_seconds"] >= 0
    assert d["paused"] is False
    (m,) = data["models"]
    assert (m["name"], m["datasets"], m["done"], m["pending"], m["cancelled"]) == (
        "alphabet", 1, 10, 13, 1)
    assert data["people"]["citizens"] == {"total": 2, "connected": 2, "active_24h": 2,
                                          "resting": 0, "blocked": 0}
    assert data["people"]["volunteers"]["total"] == 1  # lab
    assert data["people"]["volunteers"]["connected"] == 1
    assert sorted(c["valid_count"] for c in data["citizens"]) == [10, 10]


def test_status_shows_paused_and_cancelled_flags(alphabet, database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    second = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                    again=True)
    h.execute(database_url, "UPDATE datasets SET paused_at = now() WHERE id = %s",
              (alphabet.id,))
    h.execute(database_url, "UPDATE datasets SET cancelled_at = now() WHERE id = %s",
              (second.id,))
    data = monitor.status(database_url)
    by_id = {d["id"]: d for d in data["datasets"]}
    assert by_id[alphabet.id]["paused"] and by_id[alphabet.id]["paused_at"]
    assert by_id[alphabet.id]["eta_seconds"] is None
    assert by_id[second.id]["cancelled_at"] and not by_id[second.id]["paused"]
    assert by_id[second.id]["waiting"] == []  # cancelled: nothing to explain
    (m,) = data["models"]
    assert m["datasets"] == 2 and not m["paused"]
    assert m["waits_for_operator"] and m["eta_seconds"] is None  # nothing left that moves
    h.execute(database_url, "UPDATE models SET paused_at = now()")
    data = monitor.status(database_url)
    assert data["models"][0]["paused"]
    assert all(d["paused"] and d["model_paused_at"] for d in data["datasets"])


def test_status_counts_resting_blocked_and_active_citizens_and_volunteers(alphabet, database_url,
                                                                          h):
    token = catalog.add_volunteer(database_url, "alice")
    catalog.add_volunteer(database_url, "bob")
    a, b, c, d = citizens(h, database_url, "a", "b", "c", "d")
    citizens(h, database_url, "alice-1", token=token)
    h.execute(database_url, "UPDATE citizens SET cooldown_until = now() + interval '5 minutes' "
                            "WHERE id = %s", (a,))
    h.execute(database_url, "UPDATE citizens SET blocked_at = now(), blocked_reason = 'bad' "
                            "WHERE id = %s", (b,))
    h.execute(database_url, "UPDATE citizens SET connected = false, "
                            "last_seen_at = now() - interval '2 hours' WHERE id = %s", (c,))
    h.execute(database_url, "UPDATE citizens SET connected = false, "
                            "last_seen_at = now() - interval '3 days' WHERE id = %s", (d,))
    h.execute(database_url, "UPDATE volunteers SET blocked_at = now() WHERE name = 'bob'")
    data = monitor.status(database_url)
    assert data["people"]["citizens"] == {"total": 5, "connected": 3, "active_24h": 4,
                                          "resting": 1, "blocked": 1}
    assert data["people"]["volunteers"] == {"total": 3, "connected": 2, "active_24h": 2,
                                            "blocked": 1, "removed": 0}
    rows = {r["name"]: r for r in data["citizens"]}
    assert rows["a"]["resting_for"] > 200 and rows["b"]["blocked_reason"] == "bad"
    assert not rows["c"]["connected_now"] and rows["alice-1"]["volunteer"] == "alice"


def test_error_breakdown_by_model_version_and_class(alphabet, database_url, h, model_copy):
    one, two, three = citizens(h, database_url, "one", "two", "three")
    lease_and_submit(h, database_url, one, 2, error="timed out after 30s", exit_code=None)
    lease_and_submit(h, database_url, two, 3, error="exited with code 3", exit_code=3,
                     stderr="Traceback\nValueError: no")
    lease_and_submit(h, database_url, three, 1,
                     error="exited with code 137, out of memory: its limit is 64 MiB (the "
                           "manifest's memory)", exit_code=137)
    got = lease_only(h, database_url, three, 1)
    h.execute(database_url, "UPDATE replicas SET state = 'expired', error = 'deadline passed "
                            "without a result', deadline = now() WHERE id = %s",
              (got[0].replica_id,))
    # An old error is out of the 24 h window.
    h.execute(database_url, "UPDATE replicas SET returned_at = now() - interval '2 days' "
                            "WHERE id = (SELECT min(id) FROM replicas WHERE citizen_id = %s)",
              (one,))
    errors = {(e["model"], e["model_version"], e["class"]): e
              for e in monitor.status(database_url)["errors"]}
    assert {k: e["count"] for k, e in errors.items()} == {
        ("alphabet", 1, "timeout"): 1, ("alphabet", 1, "exit code 3"): 3,
        ("alphabet", 1, "out of memory"): 1, ("alphabet", 1, "deadline passed"): 1}
    assert errors["alphabet", 1, "exit code 3"]["example"] == "exited with code 3"


@pytest.mark.parametrize("error, expected", [
    ("timed out after 2s", "timeout"),
    ("exited with code 1", "exit code 1"),
    ("was killed by signal 9 (SIGKILL), out of memory: its limit is 1 MiB", "out of memory"),
    ("was killed by signal 15 (SIGTERM)", "killed by signal 15"),
    ("wrote no output file", "bad output"),
    ("output is not valid JSON: Expecting value", "bad output"),
    ("build failed: 'make' exited with code 2", "build failed"),
    ("deadline passed without a result", "deadline passed"),
    ("not started within its start window", "deadline passed"),
    ("citizen disconnected", "citizen left"),
    ("citizen left before receiving it", "citizen left"),
    ("bundle 0123abcd: sha256 mismatch: expected a, got b", "bundle"),
    ("cannot set up the sandbox: denied", "sandbox"),
    ("input too large to send: a duty may carry 1 bytes", "too large"),
    ("something new", "other"),
])
def test_error_classes(alphabet, database_url, h, error, expected):
    (one,) = citizens(h, database_url, "one")
    lease_and_submit(h, database_url, one, 1, error=error, exit_code=None)
    assert [e["class"] for e in monitor.status(database_url)["errors"]] == [expected]


def test_servers_seen_lately_are_listed(database_url, h):
    for address, seen, stopped, draining in (("10.0.0.1:7777", "1 second", False, False),
                                             ("10.0.0.2:7777", "2 seconds", False, True),
                                             ("10.0.0.3:7777", "5 minutes", False, False),
                                             ("10.0.0.4:7777", "1 second", True, False)):
        h.execute(database_url, "INSERT INTO servers (id, address, hostname, pid, version, "
                                "seen_at, stopped_at, connections, leased, results, draining) "
                                "VALUES (%s, %s, 'box', 42, '0.1', now() - %s::interval, "
                                "CASE WHEN %s THEN now() END, 3, 100, 90, %s)",
                  (uuid.uuid4(), address, seen, stopped, draining))
    servers = monitor.status(database_url)["servers"]
    assert [(s["address"], s["draining"], s["connections"], s["leased"], s["results"])
            for s in servers] == [("10.0.0.1:7777", False, 3, 100, 90),
                                  ("10.0.0.2:7777", True, 3, 100, 90)]


# ---------------------------------------------------------------------------------------------
# Why a duty waits
# ---------------------------------------------------------------------------------------------

def test_duty_show_finished_duty_with_replicas_and_canonical(alphabet, database_url, h):
    one, two = citizens(h, database_url, "one", "two")
    lease_and_submit(h, database_url, one, 1)
    lease_and_submit(h, database_url, two, 1)
    d = monitor.duty(database_url, 1)
    json.dumps(d)
    assert (d["state"], d["model"], d["dataset_id"], d["input"]) == (
        "done", "alphabet", alphabet.id, [{"letter": "a"}])
    assert d["canonical"] == [{"original_letter": "a", "letter": "b"}]
    assert [r["citizen"] for r in d["replicas"]] == ["one", "two"]
    assert {r["state"] for r in d["replicas"]} == {"valid"}
    assert d["canonical_replica_id"] in {r["id"] for r in d["replicas"]}
    assert all(r["digest"] and r["volunteer"] == "lab" and r["stderr_tail"] == "tail"
               for r in d["replicas"])
    assert d["waiting"] == []
    with pytest.raises(NotFound):
        monitor.duty(database_url, 999)


def test_duty_waits_for_no_citizen_then_memory(database_url, h, model_copy):
    catalog.add_model(database_url, model_copy(memory="512m"))
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")
    first = h.fetch(database_url, "SELECT min(id) FROM duties WHERE dataset_id = %s",
                    (ds.id,))[0][0]
    assert kinds(monitor.duty(database_url, first)) == ["no-citizen"]
    citizens(h, database_url, "small", memory=128 * MIB)
    (w,) = monitor.duty(database_url, first)["waiting"]
    assert w["kind"] == "memory" and "512" in w["reason"] and "128" in w["reason"]


def test_duty_waits_while_paused_cancelled_or_servers_drain(alphabet, database_url, h):
    citizens(h, database_url, "one")
    assert kinds(monitor.duty(database_url, 5)) == ["queued"]
    h.execute(database_url, "UPDATE datasets SET paused_at = now()")
    assert kinds(monitor.duty(database_url, 5)) == ["dataset-paused"]
    h.execute(database_url, "UPDATE models SET paused_at = now()")
    h.execute(database_url, "UPDATE datasets SET paused_at = NULL, cancelled_at = now()")
    assert kinds(monitor.duty(database_url, 5)) == ["cancelled", "model-paused"]
    h.execute(database_url, "UPDATE models SET paused_at = NULL")
    h.execute(database_url, "UPDATE datasets SET cancelled_at = NULL")
    h.execute(database_url, "INSERT INTO servers (id, address, hostname, pid, version, draining)"
                            " VALUES (%s, '127.0.0.1:1', 'box', 1, '0.1', true)",
              (uuid.uuid4(),))
    assert kinds(monitor.duty(database_url, 5)) == ["draining"]


def test_duty_waits_for_resting_or_blocked_citizens(alphabet, database_url, h):
    a, b = citizens(h, database_url, "a", "b")
    h.execute(database_url, "UPDATE citizens SET cooldown_until = now() + interval '1 hour' "
                            "WHERE id = %s", (a,))
    h.execute(database_url, "UPDATE citizens SET blocked_at = now() WHERE id = %s", (b,))
    (w,) = monitor.duty(database_url, 1)["waiting"]
    assert w["kind"] == "resting" and (w["resting"], w["blocked"]) == (1, 1)


def test_duty_waits_for_distinct_volunteers_and_for_results_out(database_url, h, model_copy):
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                distinct="volunteer")
    one, two = citizens(h, database_url, "one", "two")  # both of volunteer lab
    lease_and_submit(h, database_url, one, 1)
    d = monitor.duty(database_url, 1)
    assert kinds(d) == ["distinct"] and "distinct volunteers" in d["waiting"][0]["reason"]
    assert d["dataset_id"] == ds.id
    # Another volunteer's citizen leases it: the slot is taken, its result awaited.
    token = catalog.add_volunteer(database_url, "alice")
    (alice,) = citizens(h, database_url, "alice-1", token=token)
    (got,) = lease_only(h, database_url, alice, 1)
    assert got.duty_id == 1
    (w,) = monitor.duty(database_url, 1)["waiting"]
    assert w["kind"] == "out" and w["replicas"][0]["citizen"] == "alice-1"
    assert w["replicas"][0]["deadline_in"] > 0


def test_duty_waits_out_the_retry_pause_after_failures(alphabet, database_url, h):
    (one,) = citizens(h, database_url, "one")
    lease_and_submit(h, database_url, one, 1, error="exited with code 2", exit_code=2,
                     stderr="line 1\nboom: division by zero\n")
    d = monitor.duty(database_url, 1)
    assert d["failures"] == 1 and d["error"] == "exited with code 2"
    (r,) = d["replicas"]
    assert (r["state"], r["exit_code"], r["citizen"]) == ("error", 2, "one")
    assert "division by zero" in r["stderr_tail"]
    (w,) = d["waiting"]
    assert w["kind"] == "retry-pause" and 0 < w["retry_in"] <= monitor.RETRY_PAUSE
    (two,) = citizens(h, database_url, "two")
    (w,) = monitor.duty(database_url, 1)["waiting"]
    assert w["kind"] == "queued" and w["ahead"] == 0  # duty 1 is first in line


# ---------------------------------------------------------------------------------------------
# The commands, in process
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def run(capsys, database_url):
    def civic(*args):
        code = main(["--database-url", database_url, *args])
        return code, capsys.readouterr().out

    return civic


def test_duty_show_command_renders_replicas_stderr_and_reasons(alphabet, database_url, h, run):
    (one,) = citizens(h, database_url, "one")
    lease_and_submit(h, database_url, one, 1, error="exited with code 2", exit_code=2,
                     stderr="boom: division by zero\n")
    code, out = run("duty", "show", "1")
    assert code == 0, out
    assert "duty 1 of dataset 1, model alphabet v1: pending" in out
    assert "boom: division by zero" in out and "exited with code 2" in out
    assert "waits:" in out and "retry" in out
    code, out = run("duty", "show", "1", "--json")
    assert code == 0 and json.loads(out)["waiting"][0]["kind"] == "retry-pause"
    code, _ = run("duty", "show", "4242")
    assert code == 3


def test_status_command_json_and_table(alphabet, database_url, h, run):
    (one,) = citizens(h, database_url, "one")
    lease_and_submit(h, database_url, one, 3, error="timed out after 1s", exit_code=None)
    code, out = run("status", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert {"at", "models", "datasets", "citizens", "people", "errors", "servers"} <= set(data)
    assert data["errors"][0]["class"] == "timeout" and data["errors"][0]["count"] == 3
    code, out = run("status")
    assert code == 0 and "timeout" in out and "datasets" in out


def test_duty_waits_for_a_compiler_or_a_platform(database_url, h, model_copy):
    catalog.add_model(database_url, model_copy(platforms=["linux-aarch64"]))
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")
    citizens(h, database_url, "no-cc", builds=False)
    (w,) = monitor.duty(database_url, 1)["waiting"]
    assert w["kind"] == "build" and "C compiler" in w["reason"]
    citizens(h, database_url, "cc")
    (w,) = monitor.duty(database_url, 1)["waiting"]
    assert w["kind"] == "platform" and "linux-aarch64" in w["reason"]
