"""Operator control with two servers on one database and real citizen agents: blocking a
citizen or a volunteer, draining the servers, and the servers' events.

Every promise "at once" is checked the way it is made: nothing is leased to a blocked citizen
(or by a drained server) by a statement that starts after the operation committed — replicas
leased later than the database's clock read after the commit — and the rest within generous
waits.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from civic.citizen.agent import Agent
from civic.citizen.options import AgentOptions
from civic.errors import NotFound, Refused, UsageError
from civic.server.service import Server
from civic.store import catalog, people, servers

from test_server import running_server, wait_for as poll

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TIMEOUT = 60.0


async def wait_for(predicate, timeout: float, what: str = "the condition"):
    """Poll a blocking predicate off the event loop; fail the test when it never holds."""
    value = await poll(predicate, timeout, 0.1)
    assert value, f"timed out after {timeout:.0f}s waiting for {what}"
    return value


def agent(server: Server, home: Path, token: str, host: str | None = None) -> asyncio.Task:
    address = "%s:%s" % server.address
    return asyncio.create_task(Agent(AgentOptions(
        address=address, home=home, name=home.name, prefetch=2, token=token,
        host=host or f"host-{home.name}", backoff_base=0.2, backoff_cap=1.0)).run())


def db_now(h, url: str):
    return h.fetch(url, "SELECT now()")[0][0]


def leased_after(h, url: str, when, names: list[str]) -> int:
    return h.fetch(url, "SELECT count(*) FROM replicas r JOIN citizens c ON c.id = r.citizen_id"
                        " WHERE r.leased_at > %s AND c.name = ANY(%s)", (when, names))[0][0]


def results_of(h, url: str, name: str, dataset: int | None = None) -> int:
    return h.fetch(url, "SELECT count(*) FROM replicas r JOIN citizens c ON c.id = r.citizen_id"
                        " JOIN duties u ON u.id = r.duty_id WHERE c.name = %s"
                        " AND r.state IN ('returned', 'valid')"
                        " AND (%s::bigint IS NULL OR u.dataset_id = %s)",
                   (name, dataset, dataset))[0][0]


async def finished(url: str, dataset: int, tasks: list[asyncio.Task]) -> dict:
    def done():
        for task in tasks:
            if task.done():
                task.result()  # an agent that died: show why
        progress = catalog.progress(url, dataset)
        return progress if progress["pending"] == 0 else None
    return await wait_for(done, 180, f"dataset {dataset} to finish")


async def refusal(task: asyncio.Task) -> str:
    """What the agent of ``task`` stopped with: it must stop by itself, refused."""
    await asyncio.wait({task}, timeout=TIMEOUT)
    assert task.done(), "the refused agent goes on"
    with pytest.raises(Refused) as caught:
        task.result()
    return str(caught.value)


def verified_once(h, url: str, dataset: int) -> None:
    """Every duty done with one canonical result, from a valid replica, nothing charged."""
    rows = h.fetch(url, "SELECT u.state::text, u.failures, r.state::text FROM duties u"
                        " LEFT JOIN replicas r ON r.id = u.canonical_replica_id"
                        " WHERE u.dataset_id = %s", (dataset,))
    assert rows and all(row == ("done", 0, "valid") for row in rows), rows


def test_a_blocked_citizen_is_dropped_refused_everywhere_and_works_again_once_unblocked(
        alphabet, database_url, tmp_path, monkeypatch, h):
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0.3")
    url = database_url

    async def scenario():
        token = await asyncio.to_thread(catalog.join_token, url)
        async with running_server(url, events=False) as a, \
                running_server(url, events=False) as b:
            bad = agent(a, tmp_path / "bad", token)
            good = [agent(a, tmp_path / "good-a", token), agent(b, tmp_path / "good-b", token)]
            await wait_for(lambda: results_of(h, url, "bad") >= 2, TIMEOUT)

            done = await asyncio.to_thread(people.block_citizen, url, "bad", "sends garbage")
            committed = db_now(h, url)
            assert done.blocked and done.changed and done.kind == "citizen"
            # What it held went back at once, in the block's own transaction. (Counting its
            # leases before the block would race with the agent leasing ahead.)
            assert done.released == h.fetch(
                url, "SELECT count(*) FROM replicas r JOIN citizens c ON c.id = r.citizen_id"
                     " WHERE c.name = 'bad' AND r.error = 'citizen blocked'")[0][0]
            told = await refusal(bad)  # dropped by server A, told why; stops by itself
            assert "is blocked" in told and "sends garbage" in told

            # Coming back, on the other server: refused at hello, with the reason.
            again = agent(b, tmp_path / "bad", token)
            assert "sends garbage" in await refusal(again)

            await finished(url, alphabet.id, good)
            assert leased_after(h, url, committed, ["bad"]) == 0
            left = h.fetch(url, "SELECT r.state::text, r.charged FROM replicas r JOIN citizens c"
                                " ON c.id = r.citizen_id WHERE c.name = 'bad'"
                                " AND r.state IN ('leased', 'expired')")
            assert all(state == "expired" and not charged for state, charged in left), left
            verified_once(h, url, alphabet.id)

            # Unblocked: it connects again (to B) and computes.
            await asyncio.to_thread(people.unblock_citizen, url, "bad")
            more = await asyncio.to_thread(catalog.import_dataset, url, "alphabet",
                                           h.ALPHABET / "letters.csv", again=True)
            back = agent(b, tmp_path / "bad", token)
            await wait_for(lambda: results_of(h, url, "bad", more.id) >= 1, TIMEOUT)
            await finished(url, more.id, good + [back])
            verified_once(h, url, more.id)
            for task in good + [back]:
                task.cancel()
            await asyncio.gather(*good, back, return_exceptions=True)
            audit = [r[0] for r in h.fetch(url, "SELECT action FROM audit ORDER BY id")]
            assert audit == ["citizen block", "citizen unblock"]

    asyncio.run(scenario())


def test_blocking_a_volunteer_drops_its_citizens_on_both_servers_and_refuses_new_ones(
        alphabet, database_url, tmp_path, monkeypatch, h):
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0.3")
    url = database_url
    vera = catalog.add_volunteer(url, "vera")

    async def scenario():
        token = await asyncio.to_thread(catalog.join_token, url)
        async with running_server(url, events=False) as a, \
                running_server(url, events=False) as b:
            theirs = [agent(a, tmp_path / "vera-a", vera), agent(b, tmp_path / "vera-b", vera)]
            lab = [agent(a, tmp_path / "lab-a", token), agent(b, tmp_path / "lab-b", token)]
            await wait_for(lambda: results_of(h, url, "vera-a") and results_of(h, url, "vera-b"),
                           TIMEOUT)
            done = await asyncio.to_thread(people.block_volunteer, url, "vera", "cheating")
            committed = db_now(h, url)
            assert done.citizens == 2
            for task in theirs:
                told = await refusal(task)
                assert "volunteer 'vera' is blocked" in told and "cheating" in told
            newcomer = agent(a, tmp_path / "vera-new", vera)  # a new citizen of theirs
            assert "cheating" in await refusal(newcomer)
            await finished(url, alphabet.id, lab)
            assert leased_after(h, url, committed, ["vera-a", "vera-b", "vera-new"]) == 0
            assert h.fetch(url, "SELECT count(*) FROM citizens WHERE name = 'vera-new'"
                           )[0][0] == 0
            verified_once(h, url, alphabet.id)
            for task in lab:
                task.cancel()
            await asyncio.gather(*lab, return_exceptions=True)

    asyncio.run(scenario())


def test_block_names_what_it_cannot_find_or_cannot_tell_apart(database_url, h):
    with pytest.raises(NotFound):
        people.block_citizen(database_url, "nobody")
    with pytest.raises(NotFound):
        people.block_volunteer(database_url, "nobody")

    async def two():
        async with h.open_pool(database_url) as pool:
            return [await h.new_citizen(pool, "twin") for _ in range(2)]
    first, _ = asyncio.run(two())
    with pytest.raises(UsageError, match="2 citizens are named 'twin'"):
        people.block_citizen(database_url, "twin")
    assert people.block_citizen(database_url, first).id == first  # by id: no doubt
    assert h.fetch(database_url, "SELECT count(*) FROM audit")[0][0] == 1


def test_a_drain_stops_leasing_on_every_server_lets_work_in_flight_finish_and_undrain_resumes(
        alphabet, database_url, tmp_path, monkeypatch, h):
    monkeypatch.setenv("ALPHABET_BURN_SECONDS", "0.3")
    url = database_url

    async def scenario():
        token = await asyncio.to_thread(catalog.join_token, url)
        async with running_server(url, events=False) as a, \
                running_server(url, events=False) as b:
            names = ["a1", "a2", "b1", "b2"]
            tasks = [agent(a if n[0] == "a" else b, tmp_path / n, token) for n in names]
            await wait_for(lambda: catalog.progress(url, alphabet.id)["done"] >= 3, TIMEOUT)

            # One server: A leases nothing more, B goes on.
            one = await asyncio.to_thread(servers.drain, url, [a.id[:8]])
            committed = db_now(h, url)
            assert one.servers == (a.id,) and not one.project
            await wait_for(lambda: a.drained, TIMEOUT)
            assert not b.drained
            await wait_for(lambda: leased_after(h, url, committed, ["b1", "b2"]) >= 2, TIMEOUT)
            assert leased_after(h, url, committed, ["a1", "a2"]) == 0
            rows = {r.id: r for r in servers.list_servers(url)}
            assert rows[a.id].draining and not rows[b.id].draining

            # The whole project: neither leases; what is out comes back and counts.
            everyone = await asyncio.to_thread(servers.drain, url)
            committed = db_now(h, url)
            assert everyone.project and set(everyone.servers) == {a.id, b.id}
            await wait_for(lambda: b.drained, TIMEOUT)
            await wait_for(lambda: h.fetch(url, "SELECT count(*) FROM replicas"
                                                " WHERE state = 'leased'")[0][0] == 0, TIMEOUT)
            await asyncio.sleep(3)  # a beat or so: still nothing
            assert leased_after(h, url, committed, names) == 0
            assert h.fetch(url, "SELECT count(*) FROM replicas WHERE state = 'expired'"
                           )[0][0] == 0, "a replica in flight was not accepted"
            assert catalog.progress(url, alphabet.id)["pending"] > 0
            assert all(t.done() is False for t in tasks)  # citizens wait, connected

            # A server started during the drain joins drained.
            async with running_server(url, events=False) as late:
                assert late.drained

            await asyncio.to_thread(servers.drain, url, (), False)
            await wait_for(lambda: not a.drained and not b.drained, TIMEOUT)
            await finished(url, alphabet.id, tasks)
            verified_once(h, url, alphabet.id)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        stopped = h.fetch(url, "SELECT count(*) FROM servers WHERE stopped_at IS NOT NULL")
        assert stopped == [(3,)]

    asyncio.run(scenario())


def test_undraining_one_server_of_a_drained_project_is_refused(database_url):
    servers.drain(database_url)
    with pytest.raises(UsageError, match="whole project is drained"):
        servers.drain(database_url, ["0"], draining=False)
    with pytest.raises(NotFound):
        servers.drain(database_url, ["ffffffff"])


def test_a_servers_info_lines_are_kept_and_survive_a_restart_debug_lines_are_not(
        database_url, caplog, h):
    caplog.set_level(logging.DEBUG, logger="civic")
    url = database_url
    chatty = logging.getLogger("civic.server")

    async def scenario():
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(running_server(url))
            chatty.info("marker-info from the first server")
            chatty.debug("marker-debug from the first server")
            await wait_for(lambda: h.fetch(url, "SELECT count(*) FROM events WHERE message"
                                                " LIKE 'marker-info%%'")[0][0] == 1, TIMEOUT)
        async with running_server(url) as second:
            return first.id, second.id

    first, second = asyncio.run(scenario())
    rows = h.fetch(url, "SELECT server_id::text, level, message FROM events ORDER BY id")
    assert (first, "INFO", "marker-info from the first server") in rows
    assert not [r for r in rows if "marker-debug" in r[2]]
    mine = [m for s, _, m in rows if s == first]
    assert mine[0].startswith("listening on") and mine[-1] == "stopped"
    assert any(s == second and m.startswith("listening on") for s, _, m in rows)
    assert [e.message for e in servers.recent_events(url, 1, server=second[:8])] == ["stopped"]


def test_leasing_itself_honours_a_block_or_a_drain_committed_before_it(alphabet, database_url,
                                                                       h):
    """Whatever a server has heard yet: the lease statement reads the block and the drain."""
    url = database_url

    async def scenario():
        async with h.open_pool(url) as pool:
            blocked, other, member = [await h.new_citizen(pool, n)
                                      for n in ("blocked", "other", "member")]
            await asyncio.to_thread(people.block_citizen, url, "blocked")
            assert await h.lease(pool, blocked, 2) == []
            assert len(await h.lease(pool, other, 1)) == 1
            await asyncio.to_thread(people.block_volunteer, url, "lab")  # all three are lab's
            assert await h.lease(pool, member, 1) == []
            await asyncio.to_thread(people.unblock_volunteer, url, "lab")
            assert len(await h.lease(pool, member, 1)) == 1
            server_id = "00000000-0000-4000-8000-000000000001"
            async with pool.connection() as db:
                await servers.register(db, server_id, "127.0.0.1:1", "here", 1, "test")
            await asyncio.to_thread(servers.drain, url, [server_id])
            assert await h.lease(pool, other, 1, server_id=server_id) == []
            assert len(await h.lease(pool, other, 1)) == 1  # another server still leases
            await asyncio.to_thread(servers.drain, url, [server_id], False)
            await asyncio.to_thread(servers.drain, url)  # the project
            assert await h.lease(pool, other, 1) == []
            await asyncio.to_thread(servers.drain, url, (), False)
            assert len(await h.lease(pool, other, 1)) == 1

    asyncio.run(scenario())


def test_log_lines_are_dropped_and_counted_while_the_database_is_away_or_the_queue_full(
        database_url, monkeypatch, h):
    from civic.server import events

    monkeypatch.setattr(events, "QUEUE", 3)
    handler = events.EventLog()
    record = lambda n: logging.LogRecord("civic.server", logging.INFO, __file__, 1,  # noqa: E731
                                         "line %d", (n,), None)
    server_id = "00000000-0000-4000-8000-000000000002"

    async def scenario():
        for n in range(5):  # two more than the queue holds
            handler.emit(record(n))
        async with h.open_pool("postgresql://127.0.0.1:1/nothing?connect_timeout=1") as away:
            await handler.write_now(away, server_id)  # the database is away: all 3 lost
        handler.emit(record(5))
        async with h.open_pool(database_url) as pool:
            await handler.write_now(pool, server_id)

    # (a pool that cannot connect: opened without waiting for it)
    monkeypatch.setattr(h, "open_pool", _lazy_pool)
    asyncio.run(scenario())
    rows = h.fetch(database_url, "SELECT level, message FROM events ORDER BY id")
    assert rows == [("INFO", "line 5"), ("WARNING", "5 log line(s) not kept (the database was "
                                                     "unavailable or the queue full)")]


def _lazy_pool(url: str):
    import contextlib

    from psycopg_pool import AsyncConnectionPool

    @contextlib.asynccontextmanager
    async def pool():
        p = AsyncConnectionPool(url, min_size=0, max_size=1, open=False)
        await p.open(wait=False)
        try:
            yield p
        finally:
            await p.close()
    return pool()


def test_the_elected_reaper_trims_old_events_and_servers_long_gone(database_url, h):
    url = database_url
    h.execute(url, "INSERT INTO events (at, level, logger, message) SELECT now() - make_interval("
                   "days => CASE WHEN n <= 3 THEN 8 ELSE 0 END), 'INFO', 'civic.server', 'line '"
                   " || n FROM generate_series(1, 10) n")
    h.execute(url, "INSERT INTO servers (id, address, hostname, pid, version, seen_at) VALUES"
                   " ('00000000-0000-4000-8000-000000000003', 'a:1', 'h', 1, 'v',"
                   " now() - interval '8 days'), ('00000000-0000-4000-8000-000000000004',"
                   " 'a:2', 'h', 2, 'v', now())")

    async def trim(keep: int):
        async with h.open_pool(url) as pool, pool.connection() as db:
            return await servers.trim(db, keep=keep)

    assert asyncio.run(trim(5)) == (5, 1)  # 3 a week old, then 2 beyond the last 5
    assert [m for (m,) in h.fetch(url, "SELECT message FROM events ORDER BY id")] == [
        f"line {n}" for n in range(6, 11)]
    assert h.fetch(url, "SELECT address FROM servers") == [("a:2",)]
