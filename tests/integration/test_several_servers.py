"""Several servers on one database.

Each server sweeps for overdue replicas every few seconds (``work.reap``); of several servers on
one database, only the one that gets the reaper's advisory lock (queries.sql ``reaper_lock``)
releases anything in that sweep, and an overdue replica is released — and charged — once.

A citizen that comes back on another server while its old connection lingers keeps the replica
it computes, as it does on one server, and shows as connected.
The drills with real server processes are in tests/faults/test_multi_server.py.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import psycopg
import pytest

from civic import protocol as p
from civic.store import work
from civic.store.queries import q

pytestmark = pytest.mark.integration

# What a sweep tries (pg_try_advisory_xact_lock), as a lock that waits: the same key.
HOLD = q("reaper_lock").replace("pg_try_advisory_xact_lock", "pg_advisory_xact_lock")
_KEY = re.search(r"lock\((\d+),\s*(\d+)\)", HOLD)
assert _KEY is not None, HOLD
KEY = (int(_KEY[1]), int(_KEY[2]))
ERROR = "deadline passed without a result"


def test_only_the_server_holding_the_reaper_lock_releases_and_only_once(alphabet, database_url,
                                                                        h):
    ds = alphabet.id

    def overdue(ids: list[int], started: bool) -> None:
        h.execute(database_url, "UPDATE replicas SET deadline = now() - interval '1 second', "
                                "started_at = CASE WHEN %s THEN now() - interval '2 seconds' END "
                                "WHERE id = ANY(%s)", (started, ids))

    def states(ids: list[int]) -> list[str]:
        return [s for (s,) in h.fetch(database_url, "SELECT state::text FROM replicas "
                                                    "WHERE id = ANY(%s) ORDER BY id", (ids,))]

    def holders() -> int:
        ((n,),) = h.fetch(database_url, """SELECT count(*) FROM pg_locks l
            JOIN pg_database d ON d.oid = l.database AND d.datname = current_database()
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s
              AND l.objsubid = 2""", KEY)
        return n

    async def scenario() -> dict[str, list[int]]:
        async with h.open_pool(database_url) as pool:
            c0, c1, c2 = [await h.new_citizen(pool, name) for name in ("c0", "c1", "c2")]
            a = [x.replica_id for x in await h.lease(pool, c0, count=4)]
            b = [x.replica_id for x in await h.lease(pool, c1, count=4)]
            fresh = [x.replica_id for x in await h.lease(pool, c2, count=2)]
        assert len(a) == len(b) == 4 and len(fresh) == 2
        for batch in (a, b):  # half of each started (charged when lost), half never started
            overdue(batch[:2], started=True)
            overdue(batch[2:], started=False)

        one = await psycopg.AsyncConnection.connect(database_url)  # two servers' connections
        two = await psycopg.AsyncConnection.connect(database_url)
        holder = await psycopg.AsyncConnection.connect(database_url)  # a third server, sweeping
        try:
            # 1. Another server holds the lock: both sweep at once and release nothing.
            await holder.execute(HOLD)  # a transaction that stays open, holding the lock
            assert holders() == 1
            assert await asyncio.gather(work.reap(one, error=ERROR),
                                        work.reap(two, error=ERROR)) == [0, 0]
            assert states(a + b + fresh) == ["leased"] * 10
            await holder.rollback()
            assert holders() == 0

            # 2. The lock is free: ``one`` is elected and releases batch a in a transaction it
            #    keeps open for a while; ``two`` sweeps meanwhile and releases nothing, not
            #    even batch b (put back in time first) once it is overdue.
            h.execute(database_url, "UPDATE replicas SET deadline = now() + interval '1 hour' "
                                    "WHERE id = ANY(%s)", (b,))
            async with one.transaction():
                assert await work.reap(one, error=ERROR) == 4
                assert holders() == 1
                overdue(b[:2], started=True)
                overdue(b[2:], started=False)
                assert await work.reap(two, error=ERROR) == 0
            assert holders() == 0
            assert states(a) == ["expired"] * 4 and states(b) == ["leased"] * 4

            # 3. Both sweep at once with nobody holding the lock: batch b is released once.
            assert sorted(await asyncio.gather(work.reap(one, error=ERROR),
                                               work.reap(two, error=ERROR))) == [0, 4]
            assert await asyncio.gather(work.reap(one, error=ERROR),
                                        work.reap(two, error=ERROR)) == [0, 0]
        finally:
            for conn in (one, two, holder):
                await conn.close()
        return {"a": a, "b": b, "fresh": fresh}

    ids = asyncio.run(scenario())
    a, b, fresh = ids["a"], ids["b"], ids["fresh"]
    rows = {r[0]: r[1:] for r in h.fetch(
        database_url, "SELECT id, state::text, charged, error FROM replicas WHERE id = ANY(%s)",
        (a + b + fresh,))}
    for batch in (a, b):
        assert [rows[i] for i in batch[:2]] == [("expired", True, ERROR)] * 2
        assert [rows[i] for i in batch[2:]] == [
            ("expired", False, "not started within its start window")] * 2
    assert [rows[i][0] for i in fresh] == ["leased", "leased"]

    # Charged once: one failure for each started replica, on its duty (max_attempts is 3, so
    # none fails); every released replica's slot is open again (26 duties, replication 2, two
    # replicas still leased).
    expected = Counter(d for (d,) in h.fetch(database_url, "SELECT duty_id FROM replicas "
                                                           "WHERE id = ANY(%s)", (a[:2] + b[:2],)))
    failures = {d: n for d, n in h.fetch(database_url, "SELECT id, failures FROM duties "
                                                       "WHERE dataset_id = %s", (ds,)) if n}
    assert failures == dict(expected) and sum(failures.values()) == 4
    ((open_slots, pending),) = h.fetch(database_url, "SELECT sum(open_slots)::int, count(*) "
                                                     "FILTER (WHERE state = 'pending') FROM "
                                                     "duties WHERE dataset_id = %s", (ds,))
    assert (open_slots, pending) == (26 * 2 - 2, 26)


def _replica(url: str, h, replica_id: int) -> tuple[str, bool]:
    return h.fetch(url, "SELECT state::text, charged FROM replicas WHERE id = %s",
                   (replica_id,))[0]


@pytest.mark.parametrize("servers", [1, 2], ids=["one-server", "two-servers"])
def test_a_citizen_back_on_another_server_keeps_what_it_computes(alphabet, database_url, h,
                                                                  servers):
    """The link to a server drops unseen (a NAT, a load balancer): the citizen comes back on a
    new connection — to another server of the database, when there are several — holding the
    replica it computes, and only then is its old connection seen to end. The replica must stay
    its own and nothing be charged, as with one server (test_no_stalls.py
    ::test_a_reconnect_keeps_what_the_citizen_still_computes)."""
    from test_server import Client, running_server

    async def scenario():
        async with running_server(database_url) as first_server, \
                running_server(database_url) as second_server:
            again = first_server if servers == 1 else second_server
            first = await Client.connect(first_server)
            welcome = await first.hello("roaming")
            (a,) = (await first.request()).assignments
            await first.send(p.Heartbeat([a.replica_id], running=[a.replica_id]))
            await asyncio.sleep(0.2)
            second = await Client.connect(again)
            await second.hello("roaming", welcome.citizen_id, welcome.secret, held=[a.replica_id])
            await first.close()  # the old connection's end is seen now, before the result
            await asyncio.sleep(0.5)
            state = _replica(database_url, h, a.replica_id)
            connected = h.fetch(database_url, "SELECT connected FROM citizens")
            await second.send(p.Result(a.replica_id, 0, output=h.alphabet_output(a.input)))
            ack = await second.recv()
            await second.close()
            return a, state, connected, ack

    a, state, connected, ack = asyncio.run(scenario())
    assert ack.accepted
    assert state == ("leased", False)
    assert connected == [(True,)]  # the old connection's end did not mark it away
    assert h.fetch(database_url, "SELECT failures FROM duties WHERE id = %s",
                   (a.duty_id,)) == [(0,)]
