"""No stalls, no hangs: a lease hog, failed attempts, reconnects, restarts, database hiccups and
late results, against the real Server and PostgreSQL (raw protocol clients and real agents)."""

from __future__ import annotations

import asyncio

import pytest
from test_server import Client, running_server, wait_for

from civic import protocol as p
from civic.citizen.agent import Agent, AgentOptions
from civic.store import catalog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# The server options these drills shorten (seconds): a lease not started within START_WINDOW is
# given up; a citizen may retry a duty it failed after PAUSE.
START_WINDOW, PAUSE = 2.0, 0.5


def _state(url, h, replica_id):
    return h.fetch(url, "SELECT state::text FROM replicas WHERE id = %s", (replica_id,))[0][0]


def _duty(url, h, duty_id):
    """(state, failures, error) of a duty."""
    return h.fetch(url, "SELECT state::text, failures, error FROM duties WHERE id = %s",
                   (duty_id,))[0]


def _letters(tmp_path, count: int):
    path = tmp_path / f"letters-{count}.csv"
    path.write_text("letter\n" + "".join(f"{c}\n" for c in "abcdefghijklmnopqrstuvwxyz"[:count]))
    return path


# ---------------------------------------------------------------------------------------------
# A lease hog
# ---------------------------------------------------------------------------------------------

def test_a_lease_hog_cannot_stall_the_project(database_url, model_copy, tmp_path, monkeypatch,
                                              h):
    """A citizen with the join token leases until no-work and then claims, every heartbeat,
    to be running everything it holds. Two honest agents must still compute all 20 duties
    while it stays connected."""
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0")
    model = model_copy(timeout=4)
    catalog.add_model(database_url, model)
    ds = catalog.import_dataset(database_url, "alphabet", _letters(tmp_path, 20),
                                replication=1, quorum=1)

    async def scenario():
        async with running_server(database_url, lease_margin=1.0, start_window=START_WINDOW,
                                  retry_pause=PAUSE) as server:
            hog = await Client.connect(server)
            await hog.hello("hog")
            held: list[int] = []
            while isinstance(answer := await hog.request(32), p.Duty):
                held += [a.replica_id for a in answer.assignments]

            async def heartbeats():
                while True:
                    await hog.send(p.Heartbeat(held, running=held))
                    await asyncio.sleep(2)

            beating = asyncio.create_task(heartbeats())
            host, port = server.address
            token = await asyncio.to_thread(catalog.join_token, database_url)
            agents = [asyncio.create_task(Agent(AgentOptions(
                address=f"{host}:{port}", home=tmp_path / name, name=name, token=token,
                host=f"host-{name}")).run()) for name in ("honest-1", "honest-2")]
            try:
                progress = await wait_for(
                    lambda: (lambda pr: pr if pr["done"] == 20 else None)(
                        catalog.progress(database_url, ds.id)), timeout=120, interval=0.5)
                assert progress, catalog.progress(database_url, ds.id)
                for agent in agents:
                    assert not agent.done(), agent
                # The hog is still connected and served.
                assert isinstance(await hog.request(1), p.NoWork)
            finally:
                beating.cancel()
                for agent in agents:
                    agent.cancel()
                await asyncio.gather(beating, *agents, return_exceptions=True)
                await hog.close()
            return len(held)

    hogged = asyncio.run(scenario())
    assert hogged == 20  # it did take everything at first
    # At most the one replica it claimed to run was charged; nothing failed.
    assert h.fetch(database_url, "SELECT count(*) FILTER (WHERE state = 'failed'),"
                                 " sum(failures) FROM duties") == [(0, 1)]


def test_a_citizen_holds_at_most_max_prefetch_leases(alphabet, database_url, h):
    async def scenario():
        async with running_server(database_url, max_prefetch=5) as server:
            greedy = await Client.connect(server)
            await greedy.hello("greedy")
            first = await greedy.request(32)
            second = await greedy.request(32)
            await greedy.close()
            return first, second

    first, second = asyncio.run(scenario())
    assert len(first.assignments) == 5 and isinstance(second, p.NoWork)
    assert {a.start_within for a in first.assignments} == {60.0}  # the default window


def test_heartbeats_start_one_replica_and_extend_nothing(alphabet, database_url, h):
    """Unstarted leases have a short deadline; the one running gets timeout + margin once;
    a second 'running' replica is not started while the first still runs."""

    async def scenario():
        async with running_server(database_url, start_window=30.0, lease_margin=5.0) as server:
            client = await Client.connect(server)
            await client.hello("runner")
            a, b = (await client.request(2)).assignments
            assert a.start_within == 30.0
            await client.send(p.Heartbeat([a.replica_id, b.replica_id], running=[a.replica_id]))
            await asyncio.sleep(0.3)
            started = h.fetch(database_url, "SELECT deadline FROM replicas WHERE id = %s",
                              (a.replica_id,))
            await client.send(p.Heartbeat([a.replica_id, b.replica_id],
                                          running=[a.replica_id, b.replica_id]))
            await asyncio.sleep(0.3)
            again = h.fetch(database_url, "SELECT deadline FROM replicas WHERE id = %s",
                            (a.replica_id,))
            await client.close()
            return a, b, started, again

    a, b, started, again = asyncio.run(scenario())
    assert started == again  # a heartbeat extends nothing
    rows = dict(h.fetch(database_url, "SELECT id, extract(epoch FROM deadline - leased_at)"
                                      "::float8 FROM replicas WHERE id = ANY(%s)",
                        ([a.replica_id, b.replica_id],)))
    assert rows[a.replica_id] == pytest.approx(30 + 5, abs=2)  # alphabet timeout + margin
    assert rows[b.replica_id] == pytest.approx(30, abs=1)  # still the start window
    assert h.fetch(database_url, "SELECT started_at IS NULL FROM replicas WHERE id = %s",
                   (b.replica_id,)) == [(True,)]


def test_an_unstarted_lease_expires_without_a_failure(alphabet, database_url, h):
    async def scenario():
        async with running_server(database_url, start_window=0.5, reap_interval=0.1) as server:
            client = await Client.connect(server)
            await client.hello("idle")
            (a,) = (await client.request(1)).assignments
            assert await wait_for(lambda: _state(database_url, h, a.replica_id) == "expired")
            await client.close()
            return a

    a = asyncio.run(scenario())
    assert _duty(database_url, h, a.duty_id)[:2] == ("pending", 0)


# ---------------------------------------------------------------------------------------------
# A failed attempt is no reason to keep a citizen away forever
# ---------------------------------------------------------------------------------------------

def test_two_citizens_a_record_that_always_fails_fails_and_one_that_fails_once_is_done(
        database_url, tmp_path, h):
    """Replication 2 on two citizens (distinct citizens): before, the second attempt of a
    citizen was forbidden, so the duty waited forever."""
    catalog.add_model(database_url, h.ALPHABET)
    one = _letters(tmp_path, 1)
    always = catalog.import_dataset(database_url, "alphabet", one)
    h.execute(database_url, "UPDATE datasets SET distinct_by = 'citizen'")

    async def scenario():
        async with running_server(database_url, retry_pause=PAUSE) as server:
            a, b = await Client.connect(server), await Client.connect(server)
            await a.hello("a")
            await b.hello("b")

            async def attempt(client, ok):
                answer = None
                for _ in range(int(10 / 0.1)):  # the retry pause, then the duty again
                    answer = await client.request(1)
                    if isinstance(answer, p.Duty):
                        break
                    await asyncio.sleep(0.1)
                assert isinstance(answer, p.Duty), answer
                (x,) = answer.assignments
                output = h.alphabet_output(x.input) if ok else None
                await client.send(p.Result(x.replica_id, 0 if ok else 3, output=output,
                                           error=None if ok else "exited with code 3"))
                assert (await client.recv()).accepted
                return x.duty_id

            # The first duty always fails: a, b, then a again -> failed after 3 attempts.
            first = await attempt(a, False)
            assert await attempt(b, False) == first
            assert await attempt(a, False) == first
            # The second fails once on a, b succeeds, a's second attempt succeeds.
            await asyncio.to_thread(catalog.import_dataset, database_url, "alphabet", one,
                                    distinct="citizen", again=True)
            second = await attempt(a, False)
            assert await attempt(b, True) == second
            assert await attempt(a, True) == second
            for c in (a, b):
                await c.close()
            return first, second

    first, second = asyncio.run(scenario())
    assert h.fetch(database_url, "SELECT dataset_id FROM duties WHERE id = %s",
                   (first,)) == [(always.id,)]
    assert _duty(database_url, h, first)[:2] == ("failed", 3)
    assert _duty(database_url, h, second)[:2] == ("done", 1)


# ---------------------------------------------------------------------------------------------
# Charge nobody: reconnects, graceful stops, database errors; late results
# ---------------------------------------------------------------------------------------------

def test_a_reconnect_keeps_what_the_citizen_still_computes(alphabet, database_url, h):
    async def scenario():
        async with running_server(database_url) as server:
            first = await Client.connect(server)
            welcome = await first.hello("flaky")
            kept, dropped = (await first.request(2)).assignments
            await first.send(p.Heartbeat([kept.replica_id, dropped.replica_id],
                                         running=[kept.replica_id]))
            await asyncio.sleep(0.2)
            # The link dropped unseen by the server (a NAT, a sleeping laptop): the citizen
            # comes back on a new connection before the old one is seen to end.
            second = await Client.connect(server)
            await second.hello("flaky", welcome.citizen_id, welcome.secret,
                               held=[kept.replica_id])
            states = (_state(database_url, h, kept.replica_id),
                      _state(database_url, h, dropped.replica_id))
            await second.send(p.Result(kept.replica_id, 0, output=h.alphabet_output(kept.input)))
            ack = await second.recv()
            await first.close()
            await asyncio.sleep(0.3)  # the first connection's end is seen by now
            after = _state(database_url, h, kept.replica_id)
            await second.close()
            return kept, dropped, states, ack, after

    kept, dropped, states, ack, after = asyncio.run(scenario())
    assert states == ("leased", "expired")
    assert ack.accepted and after == "returned"
    assert _duty(database_url, h, kept.duty_id)[1] == 0
    assert _duty(database_url, h, dropped.duty_id)[:2] == ("pending", 0)


def test_a_graceful_stop_keeps_leases_and_charges_nothing(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                           replication=1, quorum=1)

    async def scenario():
        async with running_server(database_url, grace=0.3) as server:
            client = await Client.connect(server)
            welcome = await client.hello("long")
            (a,) = (await client.request()).assignments
            await client.send(p.Heartbeat([a.replica_id], running=[a.replica_id]))
            await asyncio.sleep(0.2)
            server.request_stop()
            assert isinstance(await client.recv(), p.Bye)
            await client.close()
        at_stop = h.fetch(database_url, "SELECT r.state::text, c.connected FROM replicas r"
                                        " JOIN citizens c ON c.id = r.citizen_id"
                                        " WHERE r.id = %s", (a.replica_id,))
        async with running_server(database_url) as server:  # restarted
            client = await Client.connect(server)
            await client.hello("long", welcome.citizen_id, welcome.secret, held=[a.replica_id])
            await client.send(p.Result(a.replica_id, 0, output=h.alphabet_output(a.input)))
            ack = await client.recv()
            await client.close()
        return a, at_stop, ack

    a, at_stop, ack = asyncio.run(scenario())
    assert at_stop == [("leased", False)]
    assert ack.accepted
    assert _duty(database_url, h, a.duty_id) == ("done", 0, None)


def test_a_transient_database_error_charges_nothing(database_url, h):
    """The first statement that stores an output fails (a trigger raising once): the citizen
    is told 'unavailable' and keeps its lease; its result is taken when it comes back."""
    catalog.add_model(database_url, h.ALPHABET)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                           replication=1, quorum=1)
    h.execute(database_url, """
        CREATE SEQUENCE hiccup;
        CREATE FUNCTION hiccup() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('hiccup') = 1 THEN RAISE EXCEPTION 'transient failure'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER hiccup BEFORE UPDATE OF output ON replicas
            FOR EACH ROW EXECUTE FUNCTION hiccup();""")

    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            welcome = await client.hello("unlucky")
            (a,) = (await client.request()).assignments
            await client.send(p.Heartbeat([a.replica_id], running=[a.replica_id]))
            result = p.Result(a.replica_id, 0, output=h.alphabet_output(a.input))
            await client.send(result)
            reply = await client.recv()
            await client.until_closed()
            await client.close()
            await asyncio.sleep(0.3)
            after = _state(database_url, h, a.replica_id)
            again = await Client.connect(server)
            await again.hello("unlucky", welcome.citizen_id, welcome.secret, held=[a.replica_id])
            await again.send(result)
            ack = await again.recv()
            await again.close()
            return a, reply, after, ack

    a, reply, after, ack = asyncio.run(scenario())
    assert isinstance(reply, p.Error) and reply.code == "unavailable"
    assert after == "leased"
    assert ack.accepted
    assert _duty(database_url, h, a.duty_id) == ("done", 0, None)
    assert h.fetch(database_url, "SELECT error_count FROM citizens") == [(0,)]


def test_a_late_honest_result_is_late_not_invalid(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                           replication=1, quorum=1)

    async def scenario():
        async with running_server(database_url, reap_interval=0.1) as server:
            slow, quick = await Client.connect(server), await Client.connect(server)
            await slow.hello("slow")
            await quick.hello("quick")
            (late,) = (await slow.request(1)).assignments
            h.execute(database_url, "UPDATE replicas SET deadline = now() - interval '1 second'"
                                    " WHERE id = %s", (late.replica_id,))
            assert await wait_for(lambda: _state(database_url, h, late.replica_id) == "expired")
            (again,) = (await quick.request(1)).assignments
            assert again.duty_id == late.duty_id
            await quick.send(p.Result(again.replica_id, 0, output=h.alphabet_output(again.input)))
            assert (await quick.recv()).accepted
            await slow.send(p.Result(late.replica_id, 0, output=h.alphabet_output(late.input)))
            ack = await slow.recv()
            for c in (slow, quick):
                await c.close()
            return late, ack

    late, ack = asyncio.run(scenario())
    assert ack.accepted
    assert _state(database_url, h, late.replica_id) == "late"
    assert h.fetch(database_url, "SELECT name, valid_count, invalid_count FROM citizens"
                                 " ORDER BY name") == [("quick", 1, 0), ("slow", 0, 0)]


def test_a_late_result_for_a_failed_duty_is_late(alphabet, database_url, h):
    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            await client.hello("behind")
            (a,) = (await client.request(1)).assignments
            h.execute(database_url, "UPDATE duties SET state = 'failed', open_slots = 0"
                                    " WHERE id = %s", (a.duty_id,))
            await client.send(p.Result(a.replica_id, 0, output=h.alphabet_output(a.input)))
            ack = await client.recv()
            await client.close()
            return a, ack

    a, ack = asyncio.run(scenario())
    assert ack.accepted and _state(database_url, h, a.replica_id) == "late"
    assert h.fetch(database_url, "SELECT valid_count, invalid_count FROM citizens") == [(0, 0)]


# ---------------------------------------------------------------------------------------------
# A long build is not the model's run
# ---------------------------------------------------------------------------------------------

def test_a_build_longer_than_the_timeout_charges_nothing(database_url, model_copy, tmp_path,
                                                        monkeypatch, h):
    """A citizen builds a model once, before its first run: a replica's deadline (the model's
    timeout + margin) must start when the model runs, not while the citizen builds."""
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0")
    model = model_copy(timeout=1, build="sleep 4 && cc -O2 -o alphabet alphabet.c")
    catalog.add_model(database_url, model)
    ds = catalog.import_dataset(database_url, "alphabet", _letters(tmp_path, 3),
                                replication=1, quorum=1)

    async def scenario():
        async with running_server(database_url, lease_margin=0.5, start_window=30.0) as server:
            host, port = server.address
            token = await asyncio.to_thread(catalog.join_token, database_url)
            agent = asyncio.create_task(Agent(AgentOptions(
                address=f"{host}:{port}", home=tmp_path / "builder", name="builder",
                token=token)).run())
            try:
                return await wait_for(
                    lambda: (lambda pr: pr if pr["pending"] == 0 else None)(
                        catalog.progress(database_url, ds.id)), timeout=120, interval=0.5)
            finally:
                agent.cancel()
                await asyncio.gather(agent, return_exceptions=True)

    assert asyncio.run(scenario())["done"] == 3
    assert h.fetch(database_url, "SELECT sum(failures) FROM duties") == [(0,)]
