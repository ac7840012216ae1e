"""No one let in: join tokens, connection caps, TLS; and citizens that keep lying are rested."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest
from test_server import TIMEOUT, Client, running_server, wait_for

from civic import protocol as p
from civic.citizen.agent import Agent, AgentOptions
from civic.store import catalog

pytestmark = pytest.mark.integration


async def hello_with(server, token: str | None, citizen_id=None, secret=None) -> p.Message:
    client = await Client.connect(server)
    client.token = token
    try:
        await client.send(p.Hello(p.PROTOCOL_VERSION, "c", "test", citizen_id, secret, token))
        return await client.recv()
    finally:
        await client.close()


def test_new_citizens_need_the_join_token(alphabet, database_url):
    async def scenario():
        async with running_server(database_url) as server:
            token = catalog.join_token(database_url)
            for wrong in (None, "", token + "x"):
                refused = await hello_with(server, wrong)
                assert isinstance(refused, p.Error) and refused.code == "refused"
                assert token not in refused.message
            welcome = await hello_with(server, token)
            assert isinstance(welcome, p.Welcome) and welcome.secret

            # Rotating the token shuts the door on newcomers, not on citizens already in.
            new_token = catalog.join_token(database_url, rotate=True)
            assert new_token != token
            refused = await hello_with(server, token)
            assert isinstance(refused, p.Error) and refused.code == "refused"
            back = await hello_with(server, None, welcome.citizen_id, welcome.secret)
            assert isinstance(back, p.Welcome) and back.secret is None
            assert isinstance(await hello_with(server, new_token), p.Welcome)

    asyncio.run(scenario())


def test_silent_connections_are_capped_per_address(alphabet, database_url):
    """Connections that never say hello cost one slot each up to a small cap per address;
    past it they are closed at once. Citizens from other addresses are served meanwhile."""

    async def scenario():
        async with running_server(database_url, max_handshakes=8, handshake_timeout=5) as server:
            host, port = server.address
            silent = []
            for _ in range(40):
                sock = socket.socket()
                sock.bind(("127.0.0.2", 0))
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                silent.append(sock)
            try:
                await asyncio.sleep(0.5)
                closed = 0
                for sock in silent:
                    try:
                        closed += sock.recv(1) == b""
                    except BlockingIOError:
                        pass  # still open: one of the capped few
                assert closed == 40 - 8
                client = await Client.connect(server)  # from 127.0.0.1
                assert isinstance(await client.hello("real"), p.Welcome)
                assert isinstance(await client.request(), p.Duty)
                await client.close()
            finally:
                for sock in silent:
                    sock.close()

    asyncio.run(scenario())


def test_a_heartbeat_moves_only_the_deadline_of_the_replica_it_starts(alphabet, database_url,
                                                                       h):
    """Holding a replica extends nothing; starting it gives it the model's timeout + margin
    from then, once."""

    async def scenario():
        async with running_server(database_url) as server:
            client = await Client.connect(server)
            await client.hello("slow")
            (held,) = (await client.request()).assignments
            h.execute(database_url, "UPDATE replicas SET deadline = now() + interval '1 second'"
                                    " WHERE id = %s", (held.replica_id,))
            await client.send(p.Heartbeat([held.replica_id]))
            await client.send(p.RequestDuty(1))  # answered after the heartbeat was handled
            await client.recv()
            (held_only,) = h.fetch(database_url, "SELECT extract(epoch FROM deadline - now())"
                                                 " FROM replicas WHERE id = %s",
                                   (held.replica_id,))
            await client.send(p.Heartbeat([held.replica_id], running=[held.replica_id]))
            await client.send(p.RequestDuty(1))
            await client.recv()
            await client.close()
            return held, held_only[0]

    held, held_only = asyncio.run(scenario())
    assert held_only < 1.5  # a heartbeat alone moved nothing
    ((seconds,),) = h.fetch(database_url, "SELECT extract(epoch FROM deadline - now())"
                                          " FROM replicas WHERE id = %s", (held.replica_id,))
    assert seconds > 20  # timeout 30 s + margin, from its start on


def test_a_citizen_that_keeps_disagreeing_is_rested(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")

    async def scenario():
        async with running_server(database_url, cooldown=600) as server:
            honest, other, liar = [await Client.connect(server) for _ in range(3)]
            for client, name in ((honest, "honest"), (other, "other"), (liar, "liar")):
                await client.hello(name)
            rested = False
            for _ in range(8):  # the liar and one honest citizen share each duty
                message = await liar.request()
                if isinstance(message, p.NoWork):
                    rested = True
                    break
                (lie,) = message.assignments
                await liar.send(p.Result(lie.replica_id, 0, output=[{"letter": "wrong"}]))
                await liar.recv()
                (true,) = (await honest.request()).assignments
                assert true.duty_id == lie.duty_id
                await honest.send(p.Result(true.replica_id, 0,
                                           output=h.alphabet_output(true.input)))
                await honest.recv()
                (tie,) = (await other.request()).assignments  # disagreement: a third replica
                await other.send(p.Result(tie.replica_id, 0, output=h.alphabet_output(tie.input)))
                await other.recv()
            for client in (honest, other, liar):
                await client.close()
            return rested

    assert asyncio.run(scenario()), "the liar should get no work once rested"
    rows = h.fetch(database_url, "SELECT name, invalid_count, cooldown_until > now()"
                                 " FROM citizens ORDER BY name")
    assert rows == [("honest", 0, None), ("liar", 5, True), ("other", 0, None)]
    status = catalog.status(database_url)
    assert [c["name"] for c in status["citizens"] if c["cooldown_until"]] == ["liar"]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_carries_the_whole_exchange(alphabet, database_url, tmp_path, certificate,
                                        monkeypatch):
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0")
    cert, key = certificate

    async def scenario():
        async with running_server(database_url, tls_cert=str(cert), tls_key=str(key)) as server:
            host, port = server.address
            # A plain-TCP peer gets nothing it can read as a frame.
            reader, writer = await asyncio.open_connection(host, port)
            await p.send(writer, p.Hello(p.PROTOCOL_VERSION, "plain", "test"))
            with pytest.raises((p.ProtocolError, ConnectionError, asyncio.TimeoutError)):
                await asyncio.wait_for(p.read_message(reader), TIMEOUT)
            writer.close()

            token = catalog.join_token(database_url)
            agents = [asyncio.create_task(Agent(AgentOptions(
                f"{host}:{port}", tmp_path / name, name, token=token, tls=True, ca=cert,
                host=f"host-{name}")).run())
                for name in ("t1", "t2")]
            try:
                done = await wait_for(lambda: catalog.progress(database_url, alphabet.id)
                                      ["pending"] == 0, timeout=120)
            finally:
                for agent in agents:
                    agent.cancel()
                await asyncio.gather(*agents, return_exceptions=True)
            return done

    assert asyncio.run(scenario())
    assert catalog.progress(database_url, alphabet.id)["done"] == 26
