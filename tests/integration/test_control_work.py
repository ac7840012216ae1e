"""Operator control of work — pause, resume, cancel, remove, retry — with two servers running on
one database and citizens speaking the protocol to both (the servers, scheduler and store are
the real ones; the citizens compute the alphabet model's output, or lie, in Python).

A pause is a row in the database that every lease batch reads: once the pause has committed,
no lease of the dataset's duties starts on either server, while replicas already out finish
and count. The checks compare the database's own clock: no replica of a paused dataset has a
leased_at (its leasing transaction's start) after the moment the pause had committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from civic import protocol as p
from civic.errors import NeedsConfirmation, NotFound, UsageError
from civic.store import catalog, control

pytestmark = pytest.mark.integration

TIMEOUT = 60.0  # generous: a wait that fails only when what it waits for never happens


def now(url: str) -> Any:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def duty_states(url: str, h, dataset: int) -> dict[str, int]:
    return dict(h.fetch(url, "SELECT state::text, count(*) FROM duties WHERE dataset_id = %s "
                             "GROUP BY state", (dataset,)))


def audit_rows(url: str, h) -> list[tuple[str, str]]:
    return h.fetch(url, "SELECT action, target FROM audit ORDER BY id")


class Citizens:
    """Protocol-level citizens spread over the servers, computing what ``output`` says, each
    in a loop (ask for duties, return their results) until stopped. Each assignment is noted
    as (server index, duty id, replica id)."""

    def __init__(self, servers: list[Any], h, output: Callable[[str, p.Assignment], Any]
                 | None = None) -> None:
        self.servers, self.h = servers, h
        self.output = output or (lambda name, a: h.alphabet_output(a.input))
        self.leased: list[tuple[int, int, int]] = []
        self.acks: list[p.Ack] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, count: int, prefix: str = "worker") -> None:
        from test_server import Client
        for n in range(count):
            index = n % len(self.servers)
            client = await Client.connect(self.servers[index])
            await client.hello(f"{prefix}-{n}", features=[p.BATCHES])
            self.tasks.append(asyncio.create_task(self._loop(client, index, f"{prefix}-{n}")))

    async def _loop(self, client: Any, index: int, name: str) -> None:
        try:
            while True:
                answer = await asyncio.wait_for(client.request(2), 600)
                if isinstance(answer, p.NoWork):
                    await asyncio.sleep(answer.retry_after or 0.05)
                    continue
                assert isinstance(answer, p.Duty), answer
                for a in answer.assignments:
                    self.leased.append((index, a.duty_id, a.replica_id))
                await client.send(p.Results([p.Result(a.replica_id, 0, self.output(name, a))
                                             for a in answer.assignments]))
                acks = await asyncio.wait_for(client.recv(), 600)
                assert isinstance(acks, p.Acks), acks
                self.acks += acks.acks
        finally:
            await client.close()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()


async def until(predicate: Callable[[], bool], what: str, citizens: Citizens | None = None
                ) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await asyncio.to_thread(predicate):
        for task in citizens.tasks if citizens else ():
            if task.done():  # a citizen that broke: say why, not "timed out"
                task.result()
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def finished(url: str, h, dataset: int) -> Callable[[], bool]:
    return lambda: not h.fetch(url, "SELECT 1 FROM duties WHERE dataset_id = %s "
                                    "AND state = 'pending' LIMIT 1", (dataset,))


def two_datasets(url: str, h) -> tuple[int, int]:
    catalog.add_model(url, h.ALPHABET)
    first = catalog.import_dataset(url, "alphabet", h.ALPHABET / "letters.csv").id
    second = catalog.import_dataset(url, "alphabet", h.ALPHABET / "letters.csv", again=True).id
    return first, second


def test_a_pause_stops_leases_on_both_servers_and_a_resume_wakes_them(database_url, h):
    """Dataset A is paused while a citizen holds two of its replicas: from the moment the pause
    commits neither server leases A, B is served to the end, and the two replicas out finish
    and count. Resuming wakes the citizens parked on both servers (their park would last five
    minutes: only the resume's announcement answers them) and A finishes, each duty verified
    once."""
    from test_server import Client, running_server
    a, b = two_datasets(database_url, h)

    async def scenario() -> dict[str, Any]:
        async with running_server(database_url, park=300.0) as one, \
                running_server(database_url, park=300.0) as two:
            holder = await Client.connect(one)  # holds two replicas of A over the pause
            await holder.hello("holder", features=[p.BATCHES])
            held = (await holder.request(2)).assignments
            changed = await asyncio.to_thread(control.pause_dataset, database_url, a)
            paused_at = await asyncio.to_thread(now, database_url)  # the pause has committed
            again = await asyncio.to_thread(control.pause_dataset, database_url, a)

            citizens = Citizens([one, two], h)
            await citizens.start(4)
            await until(finished(database_url, h, b), "dataset B to finish", citizens)
            await holder.send(p.Results([p.Result(x.replica_id, 0, h.alphabet_output(x.input))
                                         for x in held]))
            held_acks = await holder.recv()
            await asyncio.sleep(1.0)  # citizens keep asking on both servers meanwhile
            during = duty_states(database_url, h, a)
            leased_late = h.fetch(database_url, """
                SELECT count(*) FROM replicas r JOIN duties u ON u.id = r.duty_id
                WHERE u.dataset_id = %s AND r.leased_at > %s""", (a, paused_at))[0][0]

            resumed = await asyncio.to_thread(control.resume_dataset, database_url, a)
            await until(finished(database_url, h, a), "dataset A to finish after the resume",
                        citizens)
            await citizens.stop()
            await holder.close()
            return dict(held=held, changed=changed, again=again, during=during,
                        leased_late=leased_late, held_acks=held_acks, resumed=resumed,
                        leased=citizens.leased)

    got = asyncio.run(scenario())
    held = got["held"]
    assert [x.duty_id for x in held] and len(held) == 2
    assert {x for (x,) in h.fetch(database_url, "SELECT dataset_id FROM duties WHERE id = ANY(%s)",
                                  ([x.duty_id for x in held],))} == {a}
    assert got["changed"].changed and got["changed"].state == "paused"
    assert got["changed"].message == f"dataset {a} paused: 26 duties wait; 2 replicas out will finish"
    assert not got["again"].changed and "already paused" in got["again"].message
    assert got["leased_late"] == 0  # nothing of A leased by either server after the pause
    assert got["during"] == {"pending": 26}
    assert all(ack.accepted for ack in got["held_acks"].acks)
    # The citizens were served by both servers, and B throughout the pause.
    assert {server for server, _, _ in got["leased"]} == {0, 1}
    assert got["resumed"].changed and got["resumed"].waiting == 26
    # Every duty of both datasets verified exactly once: one canonical result from two
    # agreeing replicas (quorum 2), the held replicas of A among them.
    for dataset in (a, b):
        assert duty_states(database_url, h, dataset) == {"done": 26}
        rows = h.fetch(database_url, """
            SELECT u.id, count(r.id) FILTER (WHERE r.state = 'valid'), u.canonical_replica_id
            FROM duties u LEFT JOIN replicas r ON r.duty_id = u.id WHERE u.dataset_id = %s
            GROUP BY u.id""", (dataset,))
        assert all(valid == 2 and canonical is not None for _, valid, canonical in rows), rows
    states = dict(h.fetch(database_url, "SELECT id, state::text FROM replicas WHERE id = ANY(%s)",
                          ([x.replica_id for x in held],)))
    assert set(states.values()) == {"valid"}  # the replicas out at the pause counted
    assert audit_rows(database_url, h) == [("dataset pause", f"dataset {a}"),
                                           ("dataset resume", f"dataset {a}")]


def test_a_paused_model_leases_nothing_of_any_dataset_until_resumed(database_url, h):
    a, b = two_datasets(database_url, h)
    from test_server import running_server

    async def scenario() -> tuple[Any, dict[str, int], int]:
        async with running_server(database_url, park=300.0) as one, \
                running_server(database_url, park=300.0) as two:
            change = await asyncio.to_thread(control.pause_model, database_url, "alphabet")
            citizens = Citizens([one, two], h)
            await citizens.start(2)
            await asyncio.sleep(1.0)
            leased = len(citizens.leased)
            await asyncio.to_thread(control.resume_model, database_url, "alphabet")
            await until(lambda: finished(database_url, h, a)() and finished(database_url, h, b)(),
                        "both datasets to finish", citizens)
            await citizens.stop()
            return change, duty_states(database_url, h, a), leased

    change, states, leased = asyncio.run(scenario())
    assert change.changed and change.waiting == 52
    assert change.message == "model alphabet paused (1 version): 52 duties wait in 2 datasets; " \
                             "0 replicas out will finish"
    assert leased == 0 and states == {"done": 26}
    assert [r["state"] for r in catalog.list_datasets(database_url)] == ["finished", "finished"]


def test_resuming_a_model_leaves_datasets_paused_on_their_own_paused(database_url, h):
    a, b = two_datasets(database_url, h)
    control.pause_dataset(database_url, a)
    control.pause_model(database_url, "alphabet")
    assert [r["state"] for r in catalog.list_datasets(database_url)] == ["paused", "paused"]
    change = control.resume_model(database_url, "alphabet")
    assert change.message == (f"model alphabet resumed: 52 duties wait for citizens; dataset {a} "
                              f"stays paused (civic dataset resume {a})")
    assert [r["state"] for r in catalog.list_datasets(database_url)] == ["paused", "running"]
    assert control.resume_model(database_url, "alphabet").message.startswith(
        "model alphabet is not paused")
    assert [a for a, _ in audit_rows(database_url, h)] == ["dataset pause", "model pause",
                                                           "model resume"]


def test_a_new_version_of_a_paused_model_is_paused_too(database_url, h, model_copy):
    catalog.add_model(database_url, h.ALPHABET)
    control.pause_model(database_url, "alphabet")
    catalog.add_model(database_url, model_copy(timeout=20))
    assert h.fetch(database_url, "SELECT version, paused_at IS NOT NULL FROM models "
                                 "ORDER BY version") == [(1, True), (2, True)]
    assert [m.state for m in catalog.list_models(database_url)] == ["paused"]
    control.resume_model(database_url, "alphabet")
    catalog.add_model(database_url, model_copy(timeout=25))
    assert h.fetch(database_url, "SELECT paused_at IS NOT NULL FROM models") == [(False,)] * 3


def _lying_model(model_copy, **changes) -> Any:
    return model_copy(**({"max_attempts": 1, "max_replicas": 2} | changes))


def test_retry_requeues_exactly_the_selected_duties_which_then_finish(database_url, h,
                                                                       model_copy):
    """Failed duties (a model that fails on some records, with two different errors) and
    inconclusive ones (a citizen that lies, no replica to spare) are retried by filter; the
    others stay as they were; the retried ones finish on the two servers, the inconclusive ones
    by the very citizens whose disagreeing results made them inconclusive."""
    from test_server import running_server
    catalog.add_model(database_url, _lying_model(model_copy))
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv").id
    ids = {letter: i for i, letter in h.fetch(
        database_url, "SELECT id, input->0->>'letter' FROM duties WHERE dataset_id = %s", (ds,))}
    disk, segv, liar = ("a", "b", "c"), ("d",), ("e", "f")

    async def scenario() -> None:
        async with h.open_pool(database_url) as pool:
            c1, c2 = [await h.new_citizen(pool, n) for n in ("c1", "c2")]
            one = {a.duty_id: a for a in await h.lease(pool, c1, count=26, cap=32)}
            two = {a.duty_id: a for a in await h.lease(pool, c2, count=26, cap=32)}
            for letter, duty in ids.items():
                if letter in disk + segv:  # c1 fails it; max_attempts 1: the duty fails
                    error = "No space left on DISK" if letter in disk else "Segmentation fault"
                    await h.submit(pool, c1, one[duty].replica_id, exit_code=1, error=error)
                    if letter != "a":  # c2's replica of "a" is still out at the retry
                        await h.submit(pool, c2, two[duty].replica_id,
                                       h.alphabet_output(two[duty].input))
                    continue
                await h.submit(pool, c1, one[duty].replica_id, h.alphabet_output(one[duty].input))
                wrong = [{"original_letter": letter, "letter": "?"}]
                await h.submit(pool, c2, two[duty].replica_id,
                               wrong if letter in liar else h.alphabet_output(two[duty].input))
            return c2, two

    c2, two = asyncio.run(scenario())
    before = {i: s for i, s in h.fetch(database_url, "SELECT id, state::text FROM duties "
                                                     "WHERE dataset_id = %s", (ds,))}
    assert sorted(i for i, s in before.items() if s == "failed") == sorted(
        ids[x] for x in disk + segv)
    assert sorted(i for i, s in before.items() if s == "inconclusive") == sorted(
        ids[x] for x in liar)
    done_before = h.fetch(database_url, "SELECT id, canonical::text, canonical_replica_id "
                                        "FROM duties WHERE state = 'done' ORDER BY id")

    plan = control.plan_retry(database_url, state="failed", error="disk", dataset=ds)
    assert [(g.dataset, g.duties) for g in plan.groups] == [(ds, 3)]
    retried = control.retry(database_url, plan)
    assert retried.total == 3 and retried.message == f"re-queued 3 duties (failed): 3 of dataset {ds}"
    rows = {i: r for i, *r in h.fetch(database_url, """
        SELECT id, state::text, failures, error, finished_at, open_slots FROM duties
        WHERE dataset_id = %s""", (ds,))}
    for letter in disk:
        # c2's replica of "a" is still out and will count: one slot fewer
        assert rows[ids[letter]] == ["pending", 0, None, None, 1 if letter == "a" else 2]
    assert rows[ids["d"]][0] == "failed"  # another error: not selected
    assert all(rows[ids[x]][0] == "inconclusive" for x in liar)

    plan = control.plan_retry(database_url, state="inconclusive")
    assert plan.total == 2
    control.retry(database_url, plan)
    assert h.fetch(database_url, """
        SELECT count(*) FROM replicas r JOIN duties u ON u.id = r.duty_id
        WHERE u.id = ANY(%s) AND r.state = 'retired'""", ([ids[x] for x in liar],)) == [(4,)]
    assert control.plan_retry(database_url, state="inconclusive").total == 0

    async def finish() -> None:
        async with h.open_pool(database_url) as pool:  # the late result of c2 for "a" counts
            accepted, what = await h.submit(pool, c2, two[ids["a"]].replica_id,
                                             h.alphabet_output(two[ids["a"]].input))
            assert accepted, what
        async with running_server(database_url) as one, running_server(database_url) as two_:
            citizens = Citizens([one, two_], h)
            await citizens.start(4)
            await until(lambda: not h.fetch(database_url, "SELECT 1 FROM duties WHERE "
                                                          "state = 'pending'"),
                        "the retried duties to finish", citizens)
            await citizens.stop()

    asyncio.run(finish())
    after = dict(h.fetch(database_url, "SELECT id, state::text FROM duties"))
    assert after[ids["d"]] == "failed"
    assert sum(1 for s in after.values() if s == "done") == 25
    # The duties that were done kept their results untouched.
    assert h.fetch(database_url, "SELECT id, canonical::text, canonical_replica_id FROM duties "
                                 "WHERE id = ANY(%s) ORDER BY id",
                   ([i for i, *_ in done_before],)) == done_before
    assert [a for a, _ in audit_rows(database_url, h)] == ["duties retry"] * 2


def test_retry_checks_its_filter(database_url, h, alphabet):
    with pytest.raises(UsageError, match="--state must be one of failed, inconclusive, cancelled"):
        control.plan_retry(database_url, state="done")
    with pytest.raises(NotFound, match="no dataset 99"):
        control.plan_retry(database_url, dataset=99)
    plan = control.plan_retry(database_url)
    assert plan.total == 0 and control.retry(database_url, plan).total == 0
    assert audit_rows(database_url, h) == []  # nothing re-queued, nothing recorded


def test_cancel_keeps_results_and_takes_a_late_result_as_late(database_url, h):
    """Two duties done, two replicas out, the rest pending: cancel; the servers lease nothing
    of it afterwards; the result of a replica out comes back as late and changes nothing;
    retrying the cancelled duties computes them."""
    from test_server import running_server
    a, b = two_datasets(database_url, h)

    async def before() -> tuple[str, Any]:
        async with h.open_pool(database_url) as pool:
            c1, c2 = [await h.new_citizen(pool, n) for n in ("c1", "c2")]
            x = await h.lease(pool, c1, count=3)
            y = await h.lease(pool, c2, count=2)
            for c, leased in ((c1, x[:2]), (c2, y)):
                for r in leased:
                    assert (await h.submit(pool, c, r.replica_id,
                                           h.alphabet_output(r.input)))[0]
            return c1, x[2]

    c1, out = asyncio.run(before())
    change = control.cancel_dataset(database_url, a)
    assert change.message == (f"dataset {a} cancelled: 24 duties cancelled, 2 done keep their "
                              "results; 1 replica out will come back as late results, counted "
                              "for nobody")
    assert duty_states(database_url, h, a) == {"done": 2, "cancelled": 24}
    assert h.fetch(database_url, "SELECT count(*) FROM duties WHERE dataset_id = %s AND "
                                 "state = 'cancelled' AND finished_at IS NOT NULL AND "
                                 "open_slots = 0", (a,)) == [(24,)]
    assert control.cancel_dataset(database_url, a).message == f"dataset {a} is already cancelled"
    canonical = h.fetch(database_url, "SELECT id, canonical::text FROM duties WHERE state = 'done'")

    async def late() -> tuple[Any, int]:
        async with h.open_pool(database_url) as pool:
            answer = await h.submit(pool, c1, out.replica_id, h.alphabet_output(out.input))
        async with running_server(database_url) as one, running_server(database_url) as two:
            citizens = Citizens([one, two], h)
            await citizens.start(2)
            await until(finished(database_url, h, b), "dataset B to finish", citizens)
            await citizens.stop()
        return answer, len([d for _, d, _ in citizens.leased])

    answer, _ = asyncio.run(late())
    assert answer == (True, f"duty {out.duty_id} was already cancelled")
    assert h.fetch(database_url, "SELECT state::text FROM replicas WHERE id = %s",
                   (out.replica_id,)) == [("late",)]
    assert h.fetch(database_url, "SELECT state::text, canonical FROM duties WHERE id = %s",
                   (out.duty_id,)) == [("cancelled", None)]
    assert h.fetch(database_url, "SELECT id, canonical::text FROM duties WHERE dataset_id = %s "
                                 "AND state = 'done'", (a,)) == [r for r in canonical]
    assert catalog.progress(database_url, a)["cancelled"] == 24
    rows = {r["id"]: r for r in catalog.list_datasets(database_url)}
    assert rows[a]["state"] == "cancelled" and rows[a]["cancelled"] == 24
    assert rows[b]["state"] == "finished"

    retried = control.retry(database_url, control.plan_retry(database_url, state="cancelled"))
    assert retried.total == 24
    assert catalog.list_datasets(database_url)[0]["state"] == "running"

    async def compute() -> None:
        async with running_server(database_url) as one, running_server(database_url) as two:
            citizens = Citizens([one, two], h)
            await citizens.start(2)
            await until(finished(database_url, h, a), "dataset A to finish", citizens)
            await citizens.stop()

    asyncio.run(compute())
    assert duty_states(database_url, h, a) == {"done": 26}
    assert [x for x, _ in audit_rows(database_url, h)] == ["dataset cancel", "duties retry"]


def test_remove_deletes_only_what_was_asked(database_url, h, model_copy):
    catalog.add_model(database_url, h.ALPHABET)
    other = model_copy(name="other", description="another model")
    catalog.add_model(database_url, other)
    (other / "alphabet.c").write_text((other / "alphabet.c").read_text() + "\n/* v2 */\n")
    catalog.add_model(database_url, other)  # version 2, a bundle of its own
    fresh = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv").id
    computed = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                      again=True).id
    catalog.import_dataset(database_url, "other", h.ALPHABET / "letters.csv")
    for _ in range(3):  # every duty of every dataset done (32 leases a citizen at a time)
        asyncio.run(h.settle_all(database_url))
    h.execute(database_url, "UPDATE duties SET state = 'pending', canonical = NULL, "
                            "open_slots = 2 WHERE dataset_id = %s", (fresh,))
    h.execute(database_url, "DELETE FROM replicas r USING duties u WHERE u.id = r.duty_id "
                            "AND u.dataset_id = %s", (fresh,))
    counts = lambda: h.fetch(database_url, """SELECT (SELECT count(*) FROM models),
        (SELECT count(*) FROM datasets), (SELECT count(*) FROM duties),
        (SELECT count(*) FROM replicas), (SELECT count(*) FROM bundles)""")[0]
    assert counts() == (3, 3, 78, 104, 3)

    # No results: removed without asking.
    removed = control.remove_dataset(database_url, fresh)
    assert removed.removed and removed.message == f"dataset {fresh} removed: 26 duties (0 with results)"
    assert counts() == (3, 2, 52, 104, 3)
    # Results: refused without --yes, and nothing is deleted.
    with pytest.raises(NeedsConfirmation) as refused:
        control.remove_dataset(database_url, computed)
    assert str(refused.value) == (f"dataset {computed} holds 26 duties with results: removing "
                                  "it deletes them; nothing removed — pass --yes to remove it")
    assert counts() == (3, 2, 52, 104, 3)
    with pytest.raises(NeedsConfirmation, match="model other .2 versions, 1 dataset. holds 26 "
                                                "duties with results"):
        control.remove_model(database_url, "other")
    assert counts() == (3, 2, 52, 104, 3)
    with pytest.raises(NotFound, match="no dataset 99"):
        control.remove_dataset(database_url, 99, yes=True)
    with pytest.raises(NotFound, match="no model named 'nothing'"):
        control.remove_model(database_url, "nothing", yes=True)

    removed = control.remove_model(database_url, "other", yes=True)
    assert removed.message == ("model other removed: 2 versions, 1 dataset, 26 duties "
                               "(26 with results), 2 bundles")
    assert counts() == (1, 1, 26, 52, 1)
    assert h.fetch(database_url, "SELECT name FROM models") == [("alphabet",)]
    assert h.fetch(database_url, "SELECT id FROM datasets") == [(computed,)]
    assert h.fetch(database_url, "SELECT m.bundle_sha256 = b.sha256 FROM models m, bundles b") \
        == [(True,)]
    assert [a for a, _ in audit_rows(database_url, h)] == ["dataset remove", "model remove"]


def test_a_bundle_shared_with_another_model_is_kept(database_url, h, model_copy):
    catalog.add_model(database_url, h.ALPHABET)
    catalog.add_model(database_url, model_copy(name="twin"))
    h.execute(database_url, "INSERT INTO models (name, version, bundle_sha256, manifest) "
                            "SELECT 'twin', 2, bundle_sha256, manifest FROM models "
                            "WHERE name = 'alphabet'")  # a version with alphabet's bundle
    (kept,) = h.fetch(database_url, "SELECT bundle_sha256 FROM models WHERE name = 'alphabet'")
    assert control.remove_model(database_url, "twin").bundles == 1
    assert h.fetch(database_url, "SELECT sha256 FROM bundles") == [kept]


def test_removing_a_running_model_needs_confirming(database_url, h, alphabet):
    with pytest.raises(NeedsConfirmation, match="holds 26 duties pending"):
        control.remove_model(database_url, "alphabet")
    with pytest.raises(NotFound, match="no dataset 99"):
        control.pause_dataset(database_url, 99)
    with pytest.raises(NotFound, match="no model named 'x'"):
        control.pause_model(database_url, "x")
    assert control.remove_dataset(database_url, alphabet.id).removed  # pending only: no question
