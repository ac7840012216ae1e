"""Results from distinct sources, duties only where they fit, volunteers with tokens of their own,
and duties that wait say why: the real Server and PostgreSQL, spoken to by raw clients."""

from __future__ import annotations

import asyncio

import pytest
from test_server import Client, frames, running_server, wait_for

from civic import protocol as p
from civic.errors import NotFound, UsageError
from civic.store import catalog

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


async def _client(server, name, token=None, **hello):
    client = await Client.connect(server)
    if token is not None:
        client.token = token
    await client.hello(name, **hello)
    return client


async def _answer(client, replica, output):
    await client.send(p.Result(replica.replica_id, 0, output=output))
    ack = await client.recv()
    assert isinstance(ack, p.Ack) and ack.accepted, ack
    return ack


# ---------------------------------------------------------------------------------------------
# Distinct hosts
# ---------------------------------------------------------------------------------------------

def test_two_citizens_of_one_host_never_share_a_duty(alphabet, database_url, h):
    assert h.fetch(database_url, "SELECT distinct_by FROM datasets") == [("host",)]

    async def scenario():
        async with running_server(database_url) as server:
            one = await _client(server, "one", host="laptop")
            two = await _client(server, "two", host="laptop")
            other = await _client(server, "other", host="desktop")
            mine = (await one.request(32)).assignments
            theirs = await two.request(32)
            elsewhere = (await other.request(32)).assignments
            for c in (one, two, other):
                await c.close()
            return mine, theirs, elsewhere

    mine, theirs, elsewhere = asyncio.run(scenario())
    assert len(mine) == 26 and isinstance(theirs, p.NoWork)
    assert {a.duty_id for a in elsewhere} == {a.duty_id for a in mine}
    assert h.fetch(database_url, "SELECT DISTINCT host FROM replicas ORDER BY host") == [
        ("desktop",), ("laptop",)]


def test_the_tally_counts_each_host_once(alphabet, database_url, h):
    """Defence in depth: a replica of a host mate that expired, then came back with a result,
    does not make a quorum with its mate's."""

    async def scenario():
        async with running_server(database_url, reap_interval=0.1) as server:
            one = await _client(server, "one", host="laptop")
            two = await _client(server, "two", host="laptop")
            (a,) = (await one.request(1)).assignments
            h.execute(database_url, "UPDATE replicas SET deadline = now() - interval '1s'"
                                    " WHERE id = %s", (a.replica_id,))
            assert await wait_for(lambda: h.fetch(
                database_url, "SELECT state::text FROM replicas WHERE id = %s",
                (a.replica_id,)) == [("expired",)])
            (b,) = (await two.request(1)).assignments
            assert b.duty_id == a.duty_id  # the expired replica no longer counts
            await _answer(one, a, h.alphabet_output(a.input))  # ...until it comes back
            await _answer(two, b, h.alphabet_output(b.input))
            state = h.fetch(database_url, "SELECT state::text FROM duties WHERE id = %s",
                            (a.duty_id,))
            other = await _client(server, "other", host="desktop")
            (c,) = (await other.request(1)).assignments
            assert c.duty_id == a.duty_id
            await _answer(other, c, h.alphabet_output(c.input))
            for x in (one, two, other):
                await x.close()
            return a, state

    a, state = asyncio.run(scenario())
    assert state == [("pending",)]
    assert h.fetch(database_url, "SELECT state::text FROM duties WHERE id = %s",
                   (a.duty_id,)) == [("done",)]


def test_distinct_is_read_from_the_manifest_and_the_import(database_url, model_copy, h):
    catalog.add_model(database_url, model_copy(distinct="volunteer"))
    first = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")
    second = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                    distinct="citizen", again=True)
    with pytest.raises(UsageError, match="distinct"):
        catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                               distinct="planet", again=True)
    assert h.fetch(database_url, "SELECT id, distinct_by FROM datasets ORDER BY id") == [
        (first.id, "volunteer"), (second.id, "citizen")]


# ---------------------------------------------------------------------------------------------
# Fit: memory, a C compiler, the platform
# ---------------------------------------------------------------------------------------------

def test_a_citizen_that_cannot_build_never_gets_a_model_with_a_build_step(alphabet,
                                                                          database_url, h):
    async def scenario():
        async with running_server(database_url) as server:
            slim = await _client(server, "slim", builds=False)
            refused = await slim.request(5)
            waiting = await asyncio.to_thread(catalog.waiting, database_url, alphabet.id)
            builder = await _client(server, "builder", builds=True)
            got = await builder.request(5)
            again = await slim.request(5)
            for c in (slim, builder):
                await c.close()
            return refused, waiting, got, again

    refused, waiting, got, again = asyncio.run(scenario())
    assert isinstance(refused, p.NoWork) and isinstance(again, p.NoWork)
    assert isinstance(got, p.Duty)
    assert [w.kind for w in waiting] == ["build"]
    assert "C compiler" in waiting[0].reason and waiting[0].duties == 26
    (slim_row,) = h.fetch(database_url, "SELECT error_count, cooldown_until FROM citizens"
                                        " WHERE name = 'slim'")
    assert slim_row == (0, None)  # never rested for what it cannot do


def test_memory_above_the_citizens_is_not_leased_and_waiting_says_so(database_url, model_copy,
                                                                     h):
    catalog.add_model(database_url, model_copy(memory="512m"))
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")

    async def scenario():
        async with running_server(database_url) as server:
            small = await _client(server, "small", memory=256 * MIB)
            refused = await small.request(5)
            waiting = await asyncio.to_thread(catalog.waiting, database_url, ds.id)
            big = await _client(server, "big", memory=4096 * MIB)
            got = await big.request(1)
            for c in (small, big):
                await c.close()
            return refused, waiting, got

    refused, waiting, got = asyncio.run(scenario())
    assert isinstance(refused, p.NoWork)
    assert [w.kind for w in waiting] == ["memory"]
    assert "512 MiB" in waiting[0].reason and "256 MiB" in waiting[0].reason
    (a,) = got.assignments
    assert a.memory == 512 * MIB


def test_the_platform_must_be_one_the_model_lists(database_url, model_copy, h):
    catalog.add_model(database_url, model_copy(platforms=["linux-aarch64"]))
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")

    async def scenario():
        async with running_server(database_url) as server:
            x86 = await _client(server, "x86", platform="linux-x86_64 python3.11")
            refused = await x86.request(1)
            waiting = await asyncio.to_thread(catalog.waiting, database_url, ds.id)
            arm = await _client(server, "arm", platform="linux-aarch64 python3.11")
            got = await arm.request(1)
            for c in (x86, arm):
                await c.close()
            return refused, waiting, got

    refused, waiting, got = asyncio.run(scenario())
    assert isinstance(refused, p.NoWork) and isinstance(got, p.Duty)
    assert [w.kind for w in waiting] == ["platform"] and "linux-aarch64" in waiting[0].reason


# ---------------------------------------------------------------------------------------------
# Waiting visibly, and failing what cannot progress
# ---------------------------------------------------------------------------------------------

def test_waiting_says_why_duties_cannot_progress(alphabet, database_url, h):
    assert [w.kind for w in catalog.waiting(database_url, alphabet.id)] == ["no-citizen"]

    async def scenario():
        async with running_server(database_url) as server:
            one = await _client(server, "one", host="laptop")
            two = await _client(server, "two", host="laptop")
            for a in (await one.request(3)).assignments:
                await _answer(one, a, h.alphabet_output(a.input))
            waiting = await asyncio.to_thread(catalog.waiting, database_url, alphabet.id)
            h.execute(database_url, "UPDATE citizens SET cooldown_until = now() + interval '1h'")
            resting = await asyncio.to_thread(catalog.waiting, database_url, alphabet.id)
            for c in (one, two):
                await c.close()
            return waiting, resting

    waiting, resting = asyncio.run(scenario())
    (w,) = [w for w in waiting if w.kind == "distinct"]
    assert w.duties == 3 and "distinct hosts" in w.reason and "1 more" in w.reason
    assert len(w.duty_ids) == 3
    assert [w.kind for w in resting] == ["resting"]

    failed = catalog.fail_duties(database_url, alphabet.id, w.reason, w.duty_ids)
    assert failed == 3
    assert h.fetch(database_url, "SELECT DISTINCT state::text, error FROM duties"
                                 " WHERE id = ANY(%s)", (list(w.duty_ids),)) == [
        ("failed", w.reason)]
    assert catalog.fail_duties(database_url, alphabet.id, "no one can") == 23
    assert catalog.progress(database_url, alphabet.id)["failed"] == 26


def test_a_server_leases_only_the_datasets_it_is_given(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    first = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")
    second = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                    again=True)

    async def scenario():
        async with running_server(database_url, datasets=(second.id,)) as server:
            client = await _client(server, "only-second")
            got = (await client.request(32)).assignments
            await client.close()
            return got

    got = asyncio.run(scenario())
    duties = dict(h.fetch(database_url, "SELECT id, dataset_id FROM duties"))
    assert len(got) == 26 and {duties[a.duty_id] for a in got} == {second.id}
    assert first.id != second.id


# ---------------------------------------------------------------------------------------------
# Volunteers
# ---------------------------------------------------------------------------------------------

def test_volunteers_join_with_their_own_token_and_are_listed(alphabet, database_url, h):
    token = catalog.add_volunteer(database_url, "alice")
    assert len(token) >= 20
    with pytest.raises(UsageError, match="alice"):
        catalog.add_volunteer(database_url, "alice")
    assert token not in str(h.fetch(database_url, "SELECT * FROM volunteers"))

    async def scenario():
        async with running_server(database_url) as server:
            alice = await _client(server, "alice-1", token=token)
            lab = await _client(server, "lab-1")
            (a,) = (await alice.request(1)).assignments
            await _answer(alice, a, h.alphabet_output(a.input))
            listed = await asyncio.to_thread(catalog.list_volunteers, database_url)
            for c in (alice, lab):
                await c.close()
            return listed

    listed = {v.name: v for v in asyncio.run(scenario())}
    assert set(listed) == {"alice", "lab"}
    assert (listed["alice"].citizens, listed["alice"].connected) == (1, 1)
    assert listed["alice"].removed is False and listed["lab"].citizens == 1
    assert h.fetch(database_url, "SELECT c.name, v.name FROM citizens c JOIN volunteers v"
                                 " ON v.id = c.volunteer_id ORDER BY c.name") == [
        ("alice-1", "alice"), ("lab-1", "lab")]


def test_a_removed_volunteers_citizens_are_refused_and_dropped(alphabet, database_url, h):
    token = catalog.add_volunteer(database_url, "mallory")

    async def scenario():
        async with running_server(database_url, reap_interval=0.2) as server:
            first = await Client.connect(server)
            first.token = token
            welcome = await first.hello("m-1")
            (a,) = (await first.request(1)).assignments
            await asyncio.to_thread(catalog.remove_volunteer, database_url, "mallory")
            dropped = frames(await first.until_closed())
            await first.close()
            back = await Client.connect(server)
            await back.send(p.Hello(p.PROTOCOL_VERSION, "m-1", citizen_id=welcome.citizen_id,
                                    secret=welcome.secret))
            refused = frames(await back.until_closed())
            await back.close()
            new = await Client.connect(server)
            await new.send(p.Hello(p.PROTOCOL_VERSION, "m-2", token=token))
            stranger = frames(await new.until_closed())
            await new.close()
            return a, dropped, refused, stranger

    a, dropped, refused, stranger = asyncio.run(scenario())
    for replies in (dropped, refused, stranger):
        assert [(type(m), m.code) for m in replies] == [(p.Error, "refused")], replies
    assert "removed" in refused[0].message
    # Its lease went back to the pool, charging the duty nothing.
    assert h.fetch(database_url, "SELECT state::text FROM replicas WHERE id = %s",
                   (a.replica_id,)) == [("expired",)]
    assert h.fetch(database_url, "SELECT failures, open_slots FROM duties WHERE id = %s",
                   (a.duty_id,)) == [(0, 2)]
    (row,) = catalog.list_volunteers(database_url)[1:]
    assert row.name == "mallory" and row.removed is True
    with pytest.raises(NotFound):
        catalog.remove_volunteer(database_url, "nobody")


def test_two_liars_of_one_volunteer_never_make_a_quorum(database_url, model_copy, h):
    """distinct: volunteer. Two liars with one volunteer's token on two hosts, honest citizens
    of two other volunteers (one of them the lab's join token)."""
    catalog.add_model(database_url, model_copy(distinct="volunteer"))
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")
    mallory, alice = (catalog.add_volunteer(database_url, n) for n in ("mallory", "alice"))

    def lie(records):
        return [{"original_letter": r["letter"], "letter": "x"} for r in records]

    async def scenario():
        async with running_server(database_url) as server:
            liars = [await _client(server, f"liar-{i}", token=mallory, host=f"liar-host-{i}")
                     for i in (1, 2)]
            honest = [await _client(server, "alice-1", token=alice, host="alice-host"),
                      await _client(server, "lab-1", host="lab-host")]
            for _ in range(6):  # liars first, every round
                for client, answer in [(c, lie) for c in liars] + [
                        (c, h.alphabet_output) for c in honest]:
                    reply = await client.request(32)
                    for a in getattr(reply, "assignments", []):
                        await _answer(client, a, answer(a.input))
            for c in liars + honest:
                await c.close()

    asyncio.run(scenario())
    rows = h.fetch(database_url, "SELECT state::text, canonical::jsonb, input::jsonb FROM duties"
                                 " WHERE dataset_id = %s", (ds.id,))
    wrong = [r for r in rows if r[0] == "done" and r[1] != h.alphabet_output(r[2])]
    assert not wrong
    assert sum(r[0] == "done" for r in rows) == 26
