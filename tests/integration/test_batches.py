"""Results in batches, parked requests and reputation as a running record, on a real PostgreSQL.

A batch must do exactly what the same results one by one would: each refused or accepted on its
own, duties settled once, failures and error counts added, and one result PostgreSQL cannot
store refused alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import json

import pytest

from civic import protocol as p
from civic.server import assimilate
from civic.store import catalog, work

from test_server import Client, running_server

pytestmark = pytest.mark.integration


def test_one_batch_of_many_citizens_does_what_the_results_one_by_one_would(alphabet,
                                                                          database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b, c = [await h.new_citizen(pool, name) for name in "abc"]
            la, lb, lc = [await h.lease(pool, x, 3) for x in (a, b, c)]
            good = lambda x: p.Result(x.replica_id, 0, h.alphabet_output(x.input))  # noqa: E731
            batch = [
                (a, good(la[0])), (b, good(lb[0])),  # duty 1: agreement → done
                (a, good(la[1])), (b, p.Result(lb[1].replica_id, 0, [{"letter": "?"}])),  # 2
                (c, p.Result(lc[2].replica_id, None, error="boom")),  # duty 3: an error
                (b, good(la[2])),  # not b's replica
                (a, good(la[0])),  # sent twice in one batch
            ]
            async with pool.connection() as conn:
                outcome = await assimilate.submit_many(conn, batch)
            return la, lc, outcome

    la, lc, outcome = asyncio.run(scenario())
    answers = outcome.answers
    assert answers[0] == (True, f"duty {la[0].duty_id} done")
    assert answers[1] == (True, f"duty {la[0].duty_id} done")
    assert answers[3] == (True, f"duty {la[1].duty_id}: results disagree, 1 more replica(s)")
    assert answers[4] == (True, "error: boom")
    assert answers[5] == (False, "no such replica was leased to this citizen")
    assert answers[6] == (False, "a result for this replica was already received")
    assert outcome.settled == 1 and outcome.reopened == 2  # a slot after the error, one more
    duty = lambda i: h.fetch(database_url, "SELECT state::text, open_slots, failures FROM duties"  # noqa: E731
                                           " WHERE id = %s", (i,))[0]
    assert duty(la[0].duty_id) == ("done", 0, 0)
    assert duty(la[1].duty_id) == ("pending", 1, 0)
    assert duty(lc[2].duty_id) == ("pending", 2, 1)  # its other slot was never leased
    counts = dict((r[0], r[1:]) for r in h.fetch(
        database_url, "SELECT name, valid_count, invalid_count, error_count, recent FROM citizens"))
    assert counts == {"a": (1, 0, 0, "g"), "b": (1, 0, 0, "g"), "c": (0, 0, 1, "")}


def test_a_result_postgresql_cannot_store_is_refused_alone(alphabet, database_url, h):
    """A lone surrogate (a JSON escape) and an exit code no int column holds: each is refused
    alone, and the batch's other results are stored all the same."""
    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            await client.hello("batcher")
            duty = await client.request(3)
            first, second, third = duty.assignments
            body = json.dumps({"type": "results", "results": [
                {"replica_id": first.replica_id, "exit_code": 0, "output": "\ud800"},
                {"replica_id": second.replica_id, "exit_code": 2 ** 40, "error": "no int4"},
                {"replica_id": third.replica_id, "exit_code": 0,
                 "output": h.alphabet_output(third.input)}]})  # ASCII: the escape travels
            await client.send_raw(p.HEADER.pack(len(body)) + body.encode())
            acks = await client.recv()
            await client.close()
            return acks

    acks = asyncio.run(scenario())
    assert isinstance(acks, p.Acks)
    assert [a.accepted for a in acks.acks] == [False, False, True]
    assert all("cannot be stored" in (a.reason or "") for a in acks.acks[:2])
    states = [s for (s,) in h.fetch(database_url, "SELECT state::text FROM replicas ORDER BY id")]
    assert states == ["leased", "leased", "returned"]


def test_results_are_pipelined_acks_come_after_commit_and_requests_are_not_held_up(
        alphabet, database_url, h):
    """A citizen sends its results and its next request without waiting; the server answers
    both, in whatever order they are ready."""
    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            await client.hello("pipeliner", features=[p.BATCHES])
            first = await client.request(4)
            await client.send(p.Results([p.Result(a.replica_id, 0, h.alphabet_output(a.input))
                                         for a in first.assignments]))
            await client.send(p.RequestDuty(4))
            got = [await client.recv(), await client.recv()]
            await client.close()
            return first, got

    first, got = asyncio.run(scenario())
    acks = next(m for m in got if isinstance(m, p.Acks))
    duty = next(m for m in got if isinstance(m, p.Duty))
    assert [a.replica_id for a in acks.acks] == [a.replica_id for a in first.assignments]
    assert all(a.accepted for a in acks.acks)
    assert len(duty.assignments) == 4
    assert not {a.duty_id for a in duty.assignments} & {a.duty_id for a in first.assignments}


def test_a_parked_request_is_answered_when_work_is_imported(database_url, h):
    """No work: a citizen that speaks "batches" is not told to come back later, its request
    waits on the server; an import announces work and it gets a duty long before the park
    timeout would have answered it."""
    catalog.add_model(database_url, h.ALPHABET)

    async def scenario():
        async with running_server(database_url, park=120.0) as server:
            client = await Client.connect(server)
            await client.hello("idle", features=[p.BATCHES])
            await client.send(p.RequestDuty(1))
            with pytest.raises(asyncio.TimeoutError):  # parked: no no-work frame
                await asyncio.wait_for(client.recv(), 1.0)
            await asyncio.to_thread(catalog.import_dataset, database_url, "alphabet",
                                    h.ALPHABET / "letters.csv")
            answer = await asyncio.wait_for(client.recv(), 30.0)
            await client.close()
            return answer

    assert isinstance(asyncio.run(scenario()), p.Duty)


def test_a_parked_request_is_answered_with_no_work_at_the_park_timeout(database_url, h):
    async def scenario():
        async with running_server(database_url, park=0.5) as server:
            client = await Client.connect(server)
            await client.hello("idle", features=[p.BATCHES])
            answer = await client.request(1)
            old = await Client.connect(server)  # no "batches": told to retry, at once
            await old.hello("old")
            told = await old.request(1)
            for c in (client, old):
                await c.close()
            return answer, told

    answer, told = asyncio.run(scenario())
    assert answer == p.NoWork(0.0)
    assert told == p.NoWork(0.2)  # the test server's no_work_retry


def test_reputation_is_a_running_record_of_the_last_ten_judgements(alphabet, database_url, h):
    """Five bad judgements among the last ten rest a citizen; older ones are forgotten."""
    async def scenario():
        async with h.open_pool(database_url) as pool:
            honest, other, liar = [await h.new_citizen(pool, n) for n in
                                   ("honest", "other", "liar")]
            h.execute(database_url, "UPDATE citizens SET recent = 'ggbbbggggg' WHERE id = %s",
                      (liar,))
            rested = []
            for _ in range(2):  # 'gbbbgggggb' (4 bad), then 'bbbgggggbb' (5): rests
                (lie,) = await h.lease(pool, liar)
                (true,) = await h.lease(pool, honest)
                (tie,) = await h.lease(pool, other)  # three on one duty: settles 2 to 1
                assert lie.duty_id == true.duty_id == tie.duty_id
                async with pool.connection() as conn:
                    outcome = await assimilate.submit_many(conn, [
                        (liar, p.Result(lie.replica_id, 0, [{"letter": "?"}])),
                        (honest, p.Result(true.replica_id, 0, h.alphabet_output(true.input))),
                        (other, p.Result(tie.replica_id, 0, h.alphabet_output(tie.input)))])
                rested.append(outcome.rested)
            return rested

    h.execute(database_url, "UPDATE datasets SET replication = 3")
    h.execute(database_url, "UPDATE duties SET open_slots = 3")
    assert asyncio.run(scenario()) == [[], ["liar"]]
    rows = h.fetch(database_url, "SELECT name, recent, cooldown_until > now() FROM citizens"
                                 " ORDER BY name")
    assert rows == [("honest", "gg", None), ("liar", "bbbgggggbb", True), ("other", "gg", None)]


def test_one_lease_batch_keeps_the_distinct_fit_and_cap_rules_between_its_requests(
        database_url, h):
    """Two citizens of one host asking in the same batch never share a duty (distinct host);
    a citizen asking twice in one batch stays under its cap; a citizen that cannot build gets
    nothing of a model with a build step, and the others still get theirs."""
    catalog.add_model(database_url, h.ALPHABET)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")  # 2 replicas

    async def scenario():
        async with h.open_pool(database_url) as pool:
            async def join(name, host, builds=True):
                citizen_id, _ = await h.call(pool, work.register, citizen_id=None, secret=None,
                                             name=name, platform="linux-x86_64",
                                             address="127.0.0.1:1", host=host, builds=builds)
                return citizen_id
            one, same, other, slim = [await join("one", "box"), await join("same", "box"),
                                      await join("other", "elsewhere"),
                                      await join("slim", "thin", builds=False)]
            async with pool.connection() as conn:
                return (one, same, other, slim), await work.lease_many(
                    conn, [(one, 3), (same, 3), (other, 4), (other, 4), (slim, 2)], cap=6)

    (one, same, other, slim), leased = asyncio.run(scenario())
    duties = [{a.duty_id for a in got} for got in leased]
    assert len(duties[0]) == 3 and len(duties[1]) == 3
    assert not duties[0] & duties[1]  # one host: never two replicas of a duty
    assert len(leased[2]) + len(leased[3]) == 6  # the cap, over its two requests
    assert not duties[2] & duties[3]
    assert leased[4] == []
    rows = h.fetch(database_url, "SELECT duty_id, count(*), count(DISTINCT host) FROM replicas"
                                 " GROUP BY duty_id")
    assert all(n == hosts <= 2 for _, n, hosts in rows)
    slots = h.fetch(database_url, "SELECT sum(2 - open_slots) FROM duties")
    assert slots == [(12,)]  # open slots went down by exactly what was leased


def test_a_bundle_arrives_whole_while_duties_are_answered_beside_it(database_url, model_copy,
                                                                    h):
    """A pipelined citizen asks for more duties and for a bundle at once: the duty frame,
    ready while the bundle's stream waits for the citizen to read, goes out before the
    bundle's header or after its payload, never between its chunks."""
    model = model_copy(files=["alphabet.c", "noise.bin"])
    (model / "noise.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # several chunks, gzip-proof
    catalog.add_model(database_url, model)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")

    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            await client.hello("fetcher", features=[p.BATCHES])
            (first,) = (await client.request(1)).assignments
            await client.send(p.RequestDuty(1))  # answered by another task, any moment now
            await client.send(p.FetchBundle(first.bundle_sha256))
            await asyncio.sleep(0.5)  # not reading: the server's stream stalls mid-bundle
            others = []
            while not isinstance(header := await client.recv(), p.Bundle):
                others.append(header)  # the duty, when it was sent before the bundle
            payload = b"".join([chunk async for chunk in p.read_payload(client.reader,
                                                                        header.size)])
            others += [] if others else [await client.recv()]
            await client.close()
            return first, header, payload, others

    first, header, payload, others = asyncio.run(scenario())
    assert header.size == first.bundle_size
    assert hashlib.sha256(payload).hexdigest() == first.bundle_sha256
    assert [type(m) for m in others] == [p.Duty]


def test_a_parked_request_of_a_connection_that_ended_leases_nothing(database_url, h):
    """A citizen parks a request and leaves; work then arrives: nothing is leased for it (no
    replica given back as "left before receiving it"), and the work goes to the next one."""
    catalog.add_model(database_url, h.ALPHABET)

    async def scenario():
        async with running_server(database_url, park=120.0) as server:
            gone = await Client.connect(server)
            await gone.hello("gone", features=[p.BATCHES])
            await gone.send(p.RequestDuty(1))
            await asyncio.sleep(0.5)  # parked
            await gone.close()
            await asyncio.sleep(0.5)  # its end is seen
            await asyncio.to_thread(catalog.import_dataset, database_url, "alphabet",
                                    h.ALPHABET / "letters.csv")
            await asyncio.sleep(1.0)  # the import's announcement woke the parked requests
            later = await Client.connect(server)
            await later.hello("later", features=[p.BATCHES])
            got = await later.request(1)
            await later.close()
            return got

    assert isinstance(asyncio.run(scenario()), p.Duty)
    assert h.fetch(database_url, "SELECT count(*) FROM replicas WHERE state <> 'leased'") == [(0,)]
