"""The real Server in-process on 127.0.0.1, spoken to over raw asyncio streams and by real agents."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator

import psycopg
import pytest

from civic import protocol as p
from civic.citizen.agent import Agent, AgentOptions
from civic.server.service import Server, ServerOptions
from civic.store import catalog

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def running_server(url: str, **options) -> AsyncIterator[Server]:
    """The Server listening on 127.0.0.1 (a free port), running as a task until the block ends."""
    settings = dict(host="127.0.0.1", port=0, grace=2.0, handshake_timeout=2.0,
                    reap_interval=0.5, no_work_retry=0.2) | options
    server = Server(url, ServerOptions(**settings))
    await server.start()
    task = asyncio.create_task(server.run())
    try:
        yield server
    finally:
        server.request_stop()
        await asyncio.wait_for(task, 30)


class Client:
    """A hand-driven citizen: raw frames over a TCP stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 token: str | None = None) -> None:
        self.reader, self.writer, self.token = reader, writer, token

    @classmethod
    async def connect(cls, server: Server) -> Client:
        host, port = server.address
        token = await asyncio.to_thread(catalog.join_token, server.url)
        return cls(*await asyncio.open_connection(host, port), token=token)

    async def send(self, message: p.Message) -> None:
        await p.send(self.writer, message)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> p.Message:
        return await asyncio.wait_for(p.read_message(self.reader), TIMEOUT)

    async def hello(self, name: str = "client", citizen_id: str | None = None,
                    secret: str | None = None, **fields) -> p.Welcome:
        """Say hello; ``fields`` set Hello's other fields (host, memory, builds, held...)."""
        fields = {"platform": "linux-x86_64 test", "builds": True} | fields
        await self.send(p.Hello(p.PROTOCOL_VERSION, name, citizen_id=citizen_id, secret=secret,
                                token=self.token, **fields))
        welcome = await self.recv()
        assert isinstance(welcome, p.Welcome), welcome
        return welcome

    async def request(self, count: int = 1) -> p.Message:
        await self.send(p.RequestDuty(count))
        return await self.recv()

    async def until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        data = bytearray()
        try:
            while chunk := await asyncio.wait_for(self.reader.read(65536), TIMEOUT):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return bytes(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def frames(data: bytes) -> list[p.Message]:
    """Decode a byte string of whole frames."""
    out = []
    while data:
        (length,) = p.HEADER.unpack(data[:4])
        out.append(p.decode(data[4:4 + length]))
        data = data[4 + length:]
    return out


async def wait_for(predicate, timeout: float = TIMEOUT, interval: float = 0.05):
    """Poll a (blocking) predicate off the event loop until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(interval)


async def served_normally(server: Server, name: str = "well-behaved") -> p.Duty | p.NoWork:
    """A well-behaved client still gets a welcome and an answer to a request."""
    client = await Client.connect(server)
    try:
        welcome = await client.hello(name)
        assert welcome.citizen_id and welcome.secret
        answer = await client.request()
        assert isinstance(answer, (p.Duty, p.NoWork)), answer
        await client.send(p.Bye("done"))
        return answer
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------
# A well-behaved citizen, frame by frame
# ---------------------------------------------------------------------------------------------

def test_a_citizen_leases_fetches_and_returns_a_result(alphabet, database_url, h):
    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            welcome = await client.hello("alice")
            assert welcome.version == p.PROTOCOL_VERSION and welcome.secret

            duty = await client.request(count=2)
            assert isinstance(duty, p.Duty) and len(duty.assignments) == 2
            first = duty.assignments[0]
            assert first.input == [{"letter": "a"}] and first.model == "alphabet"

            await client.send(p.FetchBundle(first.bundle_sha256))
            header = await client.recv()
            assert isinstance(header, p.Bundle) and header.size == first.bundle_size
            payload = b"".join([chunk async for chunk in p.read_payload(client.reader, header.size)])
            assert hashlib.sha256(payload).hexdigest() == first.bundle_sha256

            for a in duty.assignments:
                await client.send(p.Result(a.replica_id, 0, output=h.alphabet_output(a.input),
                                           elapsed=0.1))
                ack = await client.recv()
                assert ack == p.Ack(a.replica_id, True, None)

            # The same result twice: refused, and the connection is kept.
            await client.send(p.Result(first.replica_id, 0, output=[]))
            ack = await client.recv()
            assert isinstance(ack, p.Ack) and not ack.accepted and "already" in ack.reason
            await client.send(p.Heartbeat([]))
            await client.send(p.Bye("done"))
            assert await client.until_closed() == b""
            await client.close()

            # A second citizen completes the quorum; reconnecting with the credential works.
            bob = await Client.connect(server)
            bob_welcome = await bob.hello("bob")
            answer = await bob.request(count=2)
            assert [a.duty_id for a in answer.assignments] == [a.duty_id for a in duty.assignments]
            for a in answer.assignments:
                await bob.send(p.Result(a.replica_id, 0, output=h.alphabet_output(a.input)))
                assert (await bob.recv()).accepted
            await bob.close()

            again = await Client.connect(server)
            back = await again.hello("bob", bob_welcome.citizen_id, bob_welcome.secret)
            assert (back.citizen_id, back.secret) == (bob_welcome.citizen_id, None)
            await again.close()
            return duty

    duty = asyncio.run(scenario())
    assert catalog.progress(database_url, alphabet.id)["done"] == 2
    states = h.fetch(database_url, "SELECT DISTINCT state::text FROM replicas WHERE duty_id = ANY(%s)",
                     ([a.duty_id for a in duty.assignments],))
    assert states == [("valid",)]


def test_a_wrong_credential_is_refused_on_the_wire(alphabet, database_url):
    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            welcome = await client.hello("mallory")
            await client.close()
            thief = await Client.connect(server)
            await thief.send(p.Hello(p.PROTOCOL_VERSION, "mallory", "", welcome.citizen_id, "guess"))
            replies = frames(await thief.until_closed())
            await thief.close()
            assert [(type(m), m.code) for m in replies] == [(p.Error, "refused")]
            await served_normally(server)

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# Hostile peers
# ---------------------------------------------------------------------------------------------

def _frame(body: bytes) -> bytes:
    return p.HEADER.pack(len(body)) + body


HOSTILE = {
    "binary garbage": bytes(range(256)) * 4,
    "http request": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "garbage body": _frame(b"\xff\xfe not json at all \x00"),
    "huge length prefix": p.HEADER.pack(0xFFFFFFFF) + b"{",
    "json that is not an object": _frame(b"[1, 2, 3]"),
    "unknown type": _frame(b'{"type": "launch-missiles", "count": 1}'),
    "bad field type": _frame(b'{"type": "hello", "version": "1", "name": "x"}'),
    "non-hello first frame": p.encode(p.RequestDuty(1)),
    "wrong protocol version": p.encode(p.Hello(99, "future")),
    "truncated frame": p.HEADER.pack(100) + b'{"type": "hel',
}


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_peer_is_disconnected_and_others_are_still_served(alphabet, database_url,
                                                                    payload, caplog):
    caplog.set_level(logging.INFO, logger="civic.server")

    async def scenario():
        async with running_server(database_url) as server:
            peer = await Client.connect(server)
            await peer.send_raw(payload)  # then say nothing more
            replies = frames(await peer.until_closed())
            await peer.close()
            assert all(isinstance(m, p.Error) for m in replies) and len(replies) <= 1, replies
            assert await wait_for(lambda: not server.connections)
            await served_normally(server)

    asyncio.run(scenario())
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


AFTER_HELLO = {
    "unknown type": _frame(b'{"type": "launch-missiles"}'),
    "server-side message": p.encode(p.Welcome(1, "00000000-0000-0000-0000-000000000000")),
    "garbage": b"\x00\x00\x00\x03abc",
    "huge length prefix": p.HEADER.pack(p.MAX_FRAME + 1),
    "unknown bundle": p.encode(p.FetchBundle("0" * 64)),
}


@pytest.mark.parametrize("payload", AFTER_HELLO.values(), ids=AFTER_HELLO.keys())
def test_a_citizen_turning_hostile_loses_its_lease(alphabet, database_url, payload, caplog, h):
    caplog.set_level(logging.INFO, logger="civic.server")

    async def scenario():
        async with running_server(database_url) as server:
            peer = await Client.connect(server)
            await peer.hello("turncoat")
            duty = await peer.request()
            await peer.send_raw(payload)
            replies = frames(await peer.until_closed())
            await peer.close()
            assert [type(m) for m in replies] == [p.Error], replies
            (replica,) = duty.assignments
            assert await wait_for(lambda: h.fetch(
                database_url, "SELECT state::text FROM replicas WHERE id = %s",
                (replica.replica_id,)) == [("expired",)])
            await served_normally(server)

    asyncio.run(scenario())
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


def test_a_peer_that_connects_and_leaves_costs_nothing(alphabet, database_url, caplog):
    caplog.set_level(logging.INFO, logger="civic.server")

    async def scenario():
        async with running_server(database_url) as server:
            for _ in range(5):
                peer = await Client.connect(server)
                await peer.close()
            assert await wait_for(lambda: not server.connections)
            await served_normally(server)

    asyncio.run(scenario())
    assert not [r for r in caplog.records
                if r.levelno >= logging.WARNING and "well-behaved" not in r.getMessage()]


def test_a_silent_peer_times_out_during_the_handshake(alphabet, database_url):
    async def scenario():
        async with running_server(database_url, handshake_timeout=0.5) as server:
            peer = await Client.connect(server)
            replies = frames(await peer.until_closed())
            await peer.close()
            assert [(type(m), m.code) for m in replies] == [(p.Error, "timeout")]
            await served_normally(server)

    asyncio.run(scenario())


@pytest.mark.parametrize("field", ["stderr_tail", "error"])
def test_a_result_with_a_nul_character_is_answered(alphabet, database_url, field, h):
    """A model may print anything; a NUL in its console tail must not cost the citizen its
    connection (the agent would resend the same result after every reconnect, forever)."""

    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            await client.hello("nul")
            (a,) = (await client.request()).assignments
            fields = {"stderr_tail": "binary junk: \x00\x01", "error": None}
            if field == "error":
                fields = {"error": "crashed with \x00 in its message", "stderr_tail": ""}
            exit_code = 0 if field == "stderr_tail" else 1
            output = h.alphabet_output(a.input) if exit_code == 0 else None
            await client.send(p.Result(a.replica_id, exit_code, output=output, **fields))
            reply = await client.recv()
            await client.close()
            assert isinstance(reply, p.Ack) and reply.replica_id == a.replica_id, reply

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# Departures
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("started", [True, False], ids=["started", "leased-ahead"])
def test_a_disconnected_citizens_lease_goes_to_another(database_url, h, started):
    """Its lease goes to another citizen at once; it counts as a failed attempt only if the
    citizen had started it (one merely leased ahead never ran the model)."""
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                replication=1, quorum=1)

    async def scenario():
        async with running_server(database_url) as server:
            quitter = await Client.connect(server)
            await quitter.hello("quitter")
            (held,) = (await quitter.request()).assignments
            if started:
                await quitter.send(p.Heartbeat([held.replica_id], running=[held.replica_id]))
                assert await wait_for(lambda: h.fetch(
                    database_url, "SELECT started_at IS NOT NULL FROM replicas WHERE id = %s",
                    (held.replica_id,)) == [(True,)])
            await quitter.close()  # gone without a word, holding the lease

            assert await wait_for(lambda: h.fetch(
                database_url, "SELECT state::text, error FROM replicas WHERE id = %s",
                (held.replica_id,)) == [("expired", "citizen disconnected")])

            other = await Client.connect(server)
            await other.hello("other")
            (again,) = (await other.request()).assignments
            assert again.duty_id == held.duty_id and again.replica_id != held.replica_id
            await other.send(p.Result(again.replica_id, 0, output=h.alphabet_output(again.input)))
            assert (await other.recv()).accepted
            await other.close()
            return held

    held = asyncio.run(scenario())
    (state, failures), = h.fetch(database_url, "SELECT state::text, failures FROM duties"
                                               " WHERE id = %s", (held.duty_id,))
    assert (state, failures) == ("done", 1 if started else 0)
    assert catalog.progress(database_url, ds.id)["done"] == 1
    assert h.fetch(database_url, "SELECT bool_or(connected) FROM citizens") == [(False,)]


def test_a_citizen_that_says_bye_frees_its_lease_without_a_failure(database_url, h):
    """A volunteer stopping a citizen did nothing wrong: its duty goes back to the pool, but
    not one step closer to max_attempts."""
    catalog.add_model(database_url, h.ALPHABET)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                           replication=1, quorum=1)

    async def scenario():
        async with running_server(database_url) as server:
            leaving = await Client.connect(server)
            await leaving.hello("leaving")
            (held,) = (await leaving.request()).assignments
            await leaving.send(p.Bye("citizen stopping"))
            await leaving.until_closed()
            assert await wait_for(lambda: h.fetch(
                database_url, "SELECT state::text, error FROM replicas WHERE id = %s",
                (held.replica_id,)) == [("expired", "citizen stopped")])
            return held

    held = asyncio.run(scenario())
    assert h.fetch(database_url, "SELECT state::text, failures, open_slots FROM duties"
                                 " WHERE id = %s", (held.duty_id,)) == [("pending", 0, 1)]


def test_a_reconnecting_citizen_frees_what_its_lost_connection_held(database_url, h):
    """A lease whose connection died unseen (say the server was killed just after committing
    it) is freed when the citizen comes back, not at its deadline, and blames no one."""
    catalog.add_model(database_url, h.ALPHABET)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                           replication=1, quorum=1)

    async def scenario():
        async with running_server(database_url) as server:
            first = await Client.connect(server)
            welcome = await first.hello("flaky")
            (held,) = (await first.request()).assignments
            second = await Client.connect(server)  # the same citizen, a new connection
            await second.hello("flaky", welcome.citizen_id, welcome.secret)
            state = h.fetch(database_url, "SELECT state::text, error FROM replicas WHERE id = %s",
                            (held.replica_id,))
            # The result it did compute is still accepted while the duty needs it.
            await second.send(p.Result(held.replica_id, 0, output=h.alphabet_output(held.input)))
            ack = await second.recv()
            for client in (first, second):
                await client.close()
            return held, state, ack

    held, state, ack = asyncio.run(scenario())
    assert state == [("expired", "lost with an earlier connection")]
    assert ack.accepted
    assert h.fetch(database_url, "SELECT state::text, failures FROM duties WHERE id = %s",
                   (held.duty_id,)) == [("done", 0)]


def test_stopping_the_server_keeps_the_leases_and_marks_citizens_gone(alphabet, database_url,
                                                                      h):
    """Stopping waits ``grace`` for results in flight, then says bye and lets each connection
    mark its citizen disconnected; the leases stay (a graceful stop is no one's failure: the
    citizen comes back holding them). A concurrent lock on the citizen's row (another server, a
    researcher's query) makes that take a moment; ``stop`` must still wait for it."""

    async def scenario():
        locker = await psycopg.AsyncConnection.connect(database_url)
        try:
            async with running_server(database_url, grace=0.3) as server:
                client = await Client.connect(server)
                await client.hello("busy")
                (a,) = (await client.request()).assignments
                await locker.execute("SELECT 1 FROM citizens FOR UPDATE")
                asyncio.get_running_loop().call_later(
                    1.0, lambda: asyncio.ensure_future(locker.rollback()))
                server.request_stop()
                assert isinstance(await client.recv(), p.Bye)
                await client.close()
            # The server has stopped.
            at_stop = await asyncio.to_thread(
                h.fetch, database_url, "SELECT r.state::text, c.connected FROM replicas r"
                " JOIN citizens c ON c.id = r.citizen_id WHERE r.id = %s", (a.replica_id,))
            await asyncio.sleep(1.5)  # the lock is gone by now, whatever stop did
            return at_stop
        finally:
            await locker.close()

    assert asyncio.run(scenario()) == [("leased", False)]


def test_the_reaper_releases_overdue_replicas(alphabet, database_url, h):
    async def scenario():
        async with running_server(database_url, reap_interval=0.1) as server:
            client = await Client.connect(server)
            await client.hello("slow")
            (a,) = (await client.request()).assignments
            await client.send(p.Heartbeat([a.replica_id], running=[a.replica_id]))  # started
            await asyncio.sleep(0.2)
            h.execute(database_url, "UPDATE replicas SET deadline = now() - interval '1 second'"
                                    " WHERE id = %s", (a.replica_id,))
            assert await wait_for(lambda: h.fetch(
                database_url, "SELECT state::text FROM replicas WHERE id = %s",
                (a.replica_id,)) == [("expired",)])
            # A late result is still taken.
            await client.send(p.Result(a.replica_id, 0, output=h.alphabet_output(a.input)))
            assert (await client.recv()).accepted
            await client.close()
            return a

    a = asyncio.run(scenario())
    (failures, error), = h.fetch(database_url, "SELECT failures, error FROM duties WHERE id = %s",
                                 (a.duty_id,))
    assert failures == 1 and "deadline" in error


# ---------------------------------------------------------------------------------------------
# A whole run with real agents
# ---------------------------------------------------------------------------------------------

async def run_agents(server: Server, url: str, dataset_id: int, homes, timeout: float):
    """Run one Agent per home until the dataset has no pending duty; returns its progress."""
    host, port = server.address
    token = await asyncio.to_thread(catalog.join_token, url)
    agents = [asyncio.create_task(Agent(AgentOptions(
        address=f"{host}:{port}", home=home, name=home.name, prefetch=2, token=token,
        host=f"host-{home.name}")).run())
        for home in homes]
    try:
        async def finished():
            while True:
                progress = await asyncio.to_thread(catalog.progress, url, dataset_id)
                if progress["pending"] == 0:
                    return progress
                for agent in agents:
                    if agent.done():
                        agent.result()  # an agent that died: show why
                await asyncio.sleep(0.2)

        return await asyncio.wait_for(finished(), timeout)
    finally:
        for agent in agents:
            agent.cancel()
        await asyncio.gather(*agents, return_exceptions=True)


def test_two_agents_compute_the_whole_alphabet(alphabet, database_url, tmp_path, monkeypatch, h):
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0.02")  # the model's CPU burn, shortened

    async def scenario():
        async with running_server(database_url) as server:
            return await run_agents(server, database_url, alphabet.id,
                                    [tmp_path / "c1", tmp_path / "c2"], timeout=120)

    progress = asyncio.run(scenario())
    assert progress == {"total": 26, "pending": 0, "done": 26, "inconclusive": 0, "failed": 0,
                        "cancelled": 0}

    rows = h.fetch(database_url, "SELECT input::jsonb, canonical::jsonb FROM duties"
                                 " WHERE dataset_id = %s ORDER BY first_record", (alphabet.id,))
    assert [canonical for _, canonical in rows] == [
        [{"original_letter": c, "letter": h.next_letter(c)}] for c in h.LETTERS]
    assert [inp for inp, _ in rows] == [[{"letter": c}] for c in h.LETTERS]

    per_duty = h.fetch(database_url, "SELECT count(DISTINCT r.citizen_id) FILTER"
                                     " (WHERE r.state = 'valid') FROM duties u JOIN replicas r"
                                     " ON r.duty_id = u.id GROUP BY u.id")
    assert {n for (n,) in per_duty} == {2}  # every duty: two citizens agreed
    citizens = h.fetch(database_url, "SELECT name, valid_count, invalid_count FROM citizens"
                                     " ORDER BY name")
    assert [(name, valid, invalid) for name, valid, invalid in citizens] == \
        [("c1", 26, 0), ("c2", 26, 0)]
    for name in ("c1", "c2"):  # each agent kept the identity it was issued
        identity = json.loads((tmp_path / name / "identity.json").read_text())
        assert oct(os.stat(tmp_path / name / "identity.json").st_mode & 0o777) == "0o600"
        assert identity["citizen_id"] in {
            str(cid) for (cid,) in h.fetch(database_url, "SELECT id FROM citizens")}


def test_a_model_printing_nul_bytes_still_gets_its_duty_done(database_url, model_copy, tmp_path,
                                                             monkeypatch, h):
    """The console tail a citizen sends back is whatever the model printed, NUL bytes included."""
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0")
    model = model_copy(run="printf 'binary\\000junk\\n'; ./alphabet {input} {output}")
    catalog.add_model(database_url, model)
    ds = catalog.import_dataset(database_url, "alphabet", model / "letters.csv",
                                records_per_duty=26)

    async def scenario():
        async with running_server(database_url) as server:
            return await run_agents(server, database_url, ds.id,
                                    [tmp_path / "c1", tmp_path / "c2"], timeout=20)

    assert asyncio.run(scenario())["done"] == 1
    (canonical,), = h.fetch(database_url, "SELECT canonical::jsonb FROM duties")
    assert canonical == h.alphabet_output([{"letter": c} for c in h.LETTERS])
