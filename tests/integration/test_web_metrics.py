"""/metrics, parsed with the Prometheus client's own parser, against the database during a job
driven frame by frame on a real Server (and a dashboard beside it, as `--web` runs it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from webkit import Client, dashboard

from civic import __version__
from civic import protocol as p
from civic.server.service import Server, ServerOptions
from civic.store import catalog

TIMEOUT = 10.0
DATABASE = {"civic_database_up", "civic_duties", "civic_citizens"}
SERVER = {"civic_server_info", "civic_leases", "civic_results", "civic_replicas",
          "civic_lease_seconds", "civic_result_seconds", "civic_citizens_connected",
          "civic_db_pool_size", "civic_db_pool_available", "civic_db_pool_max",
          "civic_db_pool_requests_waiting", "civic_db_pool_requests",
          "civic_db_pool_requests_queued", "civic_db_pool_requests_errors"}


@contextlib.asynccontextmanager
async def running_server(url: str) -> AsyncIterator[Server]:
    server = Server(url, ServerOptions(host="127.0.0.1", port=0, grace=2.0,
                                       handshake_timeout=2.0, events=False))
    await server.start()
    task = asyncio.create_task(server.run())
    try:
        yield server
    finally:
        server.request_stop()
        await asyncio.wait_for(task, 30)


class Citizen:
    """A citizen spoken frame by frame: it leases and answers exactly as told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.id = ""

    @classmethod
    async def join(cls, server: Server, name: str) -> Citizen:
        token = await asyncio.to_thread(catalog.join_token, server.url)
        citizen = cls(*await asyncio.open_connection(*server.address))
        await p.send(citizen.writer, p.Hello(p.PROTOCOL_VERSION, name, token=token,
                                             platform="linux-x86_64 test", host=f"host-{name}",
                                             builds=True))
        welcome = await citizen.recv()
        assert isinstance(welcome, p.Welcome), welcome
        citizen.id = welcome.citizen_id
        return citizen

    async def recv(self) -> p.Message:
        return await asyncio.wait_for(p.read_message(self.reader), TIMEOUT)

    async def lease(self, count: int) -> list[p.Assignment]:
        await p.send(self.writer, p.RequestDuty(count))
        duty = await self.recv()
        assert isinstance(duty, p.Duty), duty
        return duty.assignments

    async def answer(self, assignment: p.Assignment, output: Any = None, *,
                     error: str | None = None) -> None:
        result = (p.Result(assignment.replica_id, 1, error=error) if error else
                  p.Result(assignment.replica_id, 0, output=output, elapsed=0.1))
        await p.send(self.writer, result)
        ack = await self.recv()
        assert isinstance(ack, p.Ack) and ack.accepted, ack

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    """Poll a blocking predicate off the event loop until it holds (or time is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await asyncio.to_thread(predicate)) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return value


def scrape(base: str) -> tuple[str, dict[str, Any]]:
    reply = Client(base).get("/metrics")
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    return reply.text, {f.name: f for f in text_string_to_metric_families(reply.text)}


def values(family: Any, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    """A family's samples (those named family + suffix) by their sorted labels."""
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples
            if s.name == family.name + suffix}


def no_ids_in_labels(families: dict[str, Any]) -> None:
    for family in families.values():
        for sample in family.samples:
            assert not {"citizen", "volunteer", "duty", "citizen_id", "duty_id",
                        "replica"} & set(sample.labels), sample


def test_metrics_equal_the_database_during_a_job(alphabet, database_url, h) -> None:
    out = h.alphabet_output

    async def scenario() -> tuple[str, dict[str, Any], Server, list[str]]:
        async with running_server(database_url) as server:
            alice, bob, carol = [await Citizen.join(server, n) for n in ("alice", "bob", "carol")]
            a = await alice.lease(4)
            b = await bob.lease(4)
            assert [x.duty_id for x in a] == [x.duty_id for x in b]
            await alice.answer(a[0], out(a[0].input))  # duty 1: both agree: 2 valid
            await bob.answer(b[0], out(b[0].input))
            await alice.answer(a[1], out(a[1].input))  # duty 2: they disagree...
            await bob.answer(b[1], [{"wrong": True}])
            await alice.answer(a[2], error="exited with code 1")  # duty 3: an error...
            await bob.answer(b[2], out(b[2].input))
            for c in await carol.lease(2):  # ...carol breaks the tie and completes duty 3
                await carol.answer(c, out(c.input))
            # duty 4: alice's and bob's, still out. Dave leaves holding duty 5: released.
            dave = await Citizen.join(server, "dave")
            await dave.lease(1)
            await dave.close()
            assert await wait_for(lambda: h.fetch(
                database_url, "SELECT count(*) FROM replicas WHERE state = 'expired'") == [(1,)])
            with dashboard(database_url, server=server) as base:
                text, families = await asyncio.to_thread(scrape, base)
        # Closed only now: the server stopped first, so their leases stay as the scrape saw
        # them, and the database read below is that same state.
        for citizen in (alice, bob, carol):
            await citizen.close()
        return text, families, server, [alice.id, bob.id, carol.id, dave.id]

    text, families, server, citizen_ids = asyncio.run(scenario())
    assert set(families) == DATABASE | SERVER
    no_ids_in_labels(families)
    assert not any(cid in text for cid in citizen_ids)
    label = (("server", server.id[:8]),)

    duties = dict(h.fetch(database_url, "SELECT state::text, count(*) FROM duties GROUP BY 1"))
    assert duties["done"] == 3 and duties["pending"] == 23
    assert values(families["civic_duties"]) == {
        (("model", "alphabet"), ("state", state)): duties.get(state, 0)
        for state in ("pending", "done", "inconclusive", "failed", "cancelled")}

    replicas = dict(h.fetch(database_url, """
        SELECT r.state::text, count(*) FROM replicas r JOIN duties u ON u.id = r.duty_id
        JOIN models m ON m.id = u.model_id WHERE m.name = 'alphabet'
          AND r.state IN ('valid', 'invalid', 'error', 'late', 'expired') GROUP BY 1"""))
    assert replicas == {"valid": 6, "invalid": 1, "error": 1, "expired": 1}
    assert values(families["civic_replicas"], "_total") == {
        (("model", "alphabet"), ("outcome", state), *label): n for state, n in replicas.items()}

    ((leased,),) = h.fetch(database_url, "SELECT count(*) FROM replicas")
    ((returned,),) = h.fetch(database_url,
                             "SELECT count(*) FROM replicas WHERE returned_at IS NOT NULL")
    assert values(families["civic_leases"], "_total") == {label: leased} and leased == 11
    assert values(families["civic_results"], "_total") == {label: returned} and returned == 8

    assert values(families["civic_citizens"]) == {
        (("state", "connected"),): 3, (("state", "resting"),): 0, (("state", "blocked"),): 0}
    assert values(families["civic_citizens_connected"]) == {label: 3}
    assert values(families["civic_server_info"]) == {
        (("server", server.id[:8]), ("version", __version__)): 1}
    assert values(families["civic_database_up"]) == {(): 1}
    assert values(families["civic_db_pool_max"]) == {label: server.options.pool_size}
    assert 1 <= values(families["civic_db_pool_size"])[label] <= server.options.pool_size
    assert values(families["civic_db_pool_requests"], "_total")[label] > 0

    # One batch per lease request and per result here (each waited for its answer).
    for name, batches in (("civic_lease_seconds", 4), ("civic_result_seconds", 8)):
        assert values(families[name], "_count") == {label: batches}
        buckets = {dict(k)["le"]: v for k, v in values(families[name], "_bucket").items()}
        assert buckets["+Inf"] == batches
        assert list(buckets.values()) == sorted(buckets.values())  # cumulative
        assert values(families[name], "_sum")[label] > 0


def test_histograms_grow_with_batches(alphabet, database_url, h) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running_server(database_url) as server:
            with dashboard(database_url, server=server) as base:
                seen = [(await asyncio.to_thread(scrape, base))[1]]
                citizen = await Citizen.join(server, "dora")
                for _ in range(2):
                    (a,) = await citizen.lease(1)
                    await citizen.answer(a, h.alphabet_output(a.input))
                    seen.append((await asyncio.to_thread(scrape, base))[1])
                await citizen.close()
                return seen

    seen = asyncio.run(scenario())

    def count(families: dict[str, Any], name: str) -> float:
        (value,) = values(families[name], "_count").values()
        return value

    for name in ("civic_lease_seconds", "civic_result_seconds"):
        assert [count(f, name) for f in seen] == [0, 1, 2]
    assert [sum(values(f["civic_leases"], "_total").values()) for f in seen] == [0, 1, 2]
    assert [sum(values(f["civic_results"], "_total").values()) for f in seen] == [0, 1, 2]


def test_without_a_server_only_the_database_figures(alphabet, database_url, h) -> None:
    with dashboard(database_url) as base:
        text, families = scrape(base)
    assert set(families) == DATABASE
    assert values(families["civic_duties"])[(("model", "alphabet"), ("state", "pending"))] == 26
    assert values(families["civic_citizens"]) == {
        (("state", "connected"),): 0, (("state", "resting"),): 0, (("state", "blocked"),): 0}


def test_a_database_that_cannot_be_read_leaves_the_server_figures(alphabet, database_url) -> None:
    async def scenario() -> dict[str, Any]:
        async with running_server(database_url) as server:
            with dashboard("postgresql://nobody@127.0.0.1:9/none?connect_timeout=2",
                           server=server) as base:
                return (await asyncio.to_thread(scrape, base))[1]

    families = asyncio.run(scenario())
    assert set(families) == {"civic_database_up"} | SERVER
    assert values(families["civic_database_up"]) == {(): 0}
