"""The server's side of the store against a real PostgreSQL: identities, leases, quorum, release.

Plain test functions that ``asyncio.run`` their scenario, each on a fresh migrated database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import psycopg
import pytest

from civic.errors import Refused
from civic.store import catalog, work

pytestmark = pytest.mark.integration


def _register(conn, citizen_id=None, secret=None, name="c"):
    return work.register(conn, citizen_id=citizen_id, secret=secret, name=name,
                         platform="linux-x86_64", address="127.0.0.1:5000")


def _duty(url, h, duty_id):
    """The duty's state, open slots, failures and error."""
    (row,) = h.fetch(url, "SELECT state::text, open_slots, failures, error FROM duties"
                          " WHERE id = %s", (duty_id,))
    return row


def _replicas(url, h, duty_id):
    """{replica id: state} of a duty."""
    return dict(h.fetch(url, "SELECT id, state::text FROM replicas WHERE duty_id = %s",
                        (duty_id,)))


def _counts(url, h, citizen_id):
    (row,) = h.fetch(url, "SELECT valid_count, invalid_count, error_count FROM citizens"
                          " WHERE id = %s", (citizen_id,))
    return row


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------

def test_register_issues_and_checks_credentials(database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            citizen_id, secret = await h.call(pool, _register, name="first")
            assert uuid.UUID(citizen_id) and secret

            # Reconnecting with the right secret keeps the identity and issues no new secret.
            again = await h.call(pool, _register, citizen_id, secret, name="renamed")
            assert again == (citizen_id, None)

            with pytest.raises(Refused, match="wrong credential"):
                await h.call(pool, _register, citizen_id, secret + "x")
            with pytest.raises(Refused, match="wrong credential"):
                await h.call(pool, _register, citizen_id, None)
            with pytest.raises(Refused, match="malformed"):
                await h.call(pool, _register, "not-a-uuid", secret)
            with pytest.raises(Refused, match="malformed"):
                await h.call(pool, _register, "'; DROP TABLE citizens; --", secret)

            # A well-formed id this store never issued (e.g. a fresh database): a new identity.
            stranger = str(uuid.uuid4())
            other_id, other_secret = await h.call(pool, _register, stranger, "whatever")
            assert other_id not in (stranger, citizen_id) and other_secret
            return citizen_id, secret, other_id

    citizen_id, secret, other_id = asyncio.run(scenario())
    rows = h.fetch(database_url, "SELECT id::text, name, secret_sha256, connected FROM citizens"
                                 " ORDER BY created_at")
    assert [(r[0], r[1], r[3]) for r in rows] == [(citizen_id, "renamed", True),
                                                  (other_id, "c", True)]
    assert secret not in rows[0][2]  # only a hash is stored


# ---------------------------------------------------------------------------------------------
# Leasing
# ---------------------------------------------------------------------------------------------

def test_lease_gives_each_duty_to_distinct_citizens_up_to_its_replication(alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b, c = [await h.new_citizen(pool, name) for name in "abc"]

            first = await h.lease(pool, a, count=1, window=7)
            assert len(first) == 1
            one = first[0]
            assert (one.model, one.model_version, one.input) == ("alphabet", 1, [{"letter": "a"}])
            assert (one.run, one.build, one.timeout) == \
                ("./alphabet {input} {output}", "cc -O2 -o alphabet alphabet.c", 30.0)
            (sha, size), = h.fetch(database_url, "SELECT sha256, size FROM bundles")
            assert (one.bundle_sha256, one.bundle_size) == (sha, size)

            rest = await h.lease(pool, a, count=100)
            assert len(rest) == 25  # one replica of every duty, never two of the same
            assert await h.lease(pool, a, count=100) == []

            from_b = await h.lease(pool, b, count=100)
            assert sorted(x.duty_id for x in from_b) == sorted(x.duty_id for x in first + rest)
            assert await h.lease(pool, c, count=100) == []  # replication 2: all slots taken
            return one

    one = asyncio.run(scenario())
    per_duty = h.fetch(database_url, "SELECT duty_id, count(DISTINCT citizen_id), count(*)"
                                     " FROM replicas GROUP BY duty_id")
    assert len(per_duty) == 26 and {(n, m) for _, n, m in per_duty} == {(2, 2)}
    assert h.fetch(database_url, "SELECT DISTINCT open_slots FROM duties") == [(0,)]
    (seconds,), = h.fetch(database_url, "SELECT extract(epoch FROM deadline - leased_at)::float8"
                                        " FROM replicas WHERE id = %s", (one.replica_id,))
    assert seconds == pytest.approx(7, abs=1)  # the start window, until it is started


def test_concurrent_leases_never_exceed_the_open_slots(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                replication=2, quorum=2)
    citizens = 8

    async def lease_in_transaction(conn, citizen_id):
        async with conn.transaction():
            got = await work.lease(conn, citizen_id, 10)
            await asyncio.sleep(0.2)  # hold the row locks while the others lease
        return got

    async def scenario():
        async with h.open_pool(database_url) as pool:
            ids = [await h.new_citizen(pool, f"c{i}") for i in range(citizens)]
        conns = [await psycopg.AsyncConnection.connect(database_url) for _ in ids]
        try:
            handed = []
            for _ in range(10):  # rounds, until every slot is gone
                rounds = await asyncio.gather(*(lease_in_transaction(conn, cid)
                                                for conn, cid in zip(conns, ids)))
                got = [(cid, a.duty_id) for cid, batch in zip(ids, rounds) for a in batch]
                if not got:
                    break
                handed += got
            return handed
        finally:
            for conn in conns:
                await conn.close()

    handed = asyncio.run(scenario())
    assert len(handed) == len(set(handed))  # no citizen got a duty twice
    per_duty = Counter(duty for _, duty in handed)
    assert len(per_duty) == 26 and set(per_duty.values()) == {2}  # exactly the open slots
    assert h.fetch(database_url, "SELECT count(*), min(open_slots), max(open_slots) FROM duties"
                                 " WHERE dataset_id = %s", (ds.id,)) == [(26, 0, 0)]
    assert h.fetch(database_url, "SELECT count(*) FROM replicas") == [(52,)]


# ---------------------------------------------------------------------------------------------
# Results and quorum
# ---------------------------------------------------------------------------------------------

GOOD = [{"original_letter": "a", "letter": "b"}]
BAD = [{"original_letter": "a", "letter": "x"}]


def test_two_agreeing_results_settle_the_duty(alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b = await h.new_citizen(pool, "a"), await h.new_citizen(pool, "b")
            (ra,), (rb,) = await h.lease(pool, a), await h.lease(pool, b)
            assert ra.duty_id == rb.duty_id

            accepted, what = await h.submit(pool, a, ra.replica_id, GOOD)
            assert accepted and "waiting" in what
            assert _duty(database_url, h, ra.duty_id)[0] == "pending"

            # Key order never matters: the same output, spelled differently, agrees.
            accepted, what = await h.submit(pool, b, rb.replica_id,
                                            [{"letter": "b", "original_letter": "a"}])
            assert accepted and "done" in what
            return a, b, ra, rb

    a, b, ra, rb = asyncio.run(scenario())
    (state, canonical, canonical_replica), = h.fetch(
        database_url, "SELECT state::text, canonical::jsonb, canonical_replica_id FROM duties"
                      " WHERE id = %s", (ra.duty_id,))
    assert (state, canonical) == ("done", GOOD)
    assert canonical_replica == ra.replica_id
    assert _replicas(database_url, h, ra.duty_id) == {ra.replica_id: "valid", rb.replica_id: "valid"}
    assert _counts(database_url, h, a) == _counts(database_url, h, b) == (1, 0, 0)


def test_disagreement_leases_another_replica_and_the_majority_wins(alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b, c = [await h.new_citizen(pool, name) for name in "abc"]
            (ra,), (rb,) = await h.lease(pool, a), await h.lease(pool, b)
            duty = ra.duty_id
            await h.submit(pool, a, ra.replica_id, GOOD)
            accepted, what = await h.submit(pool, b, rb.replica_id, BAD)
            assert accepted and "1 more replica" in what
            assert _duty(database_url, h, duty)[:2] == ("pending", 1)

            (rc,) = await h.lease(pool, c)  # the reopened slot comes first
            assert rc.duty_id == duty
            assert await h.lease(pool, a) != [] and await h.lease(pool, b) != []  # other duties

            accepted, what = await h.submit(pool, c, rc.replica_id, GOOD)
            assert accepted and "done" in what
            return a, b, c, ra, rb, rc

    a, b, c, ra, rb, rc = asyncio.run(scenario())
    duty = ra.duty_id
    assert _duty(database_url, h, duty)[:2] == ("done", 0)
    assert h.fetch(database_url, "SELECT canonical::jsonb FROM duties WHERE id = %s",
                   (duty,)) == [(GOOD,)]
    assert _replicas(database_url, h, duty) == {
        ra.replica_id: "valid", rb.replica_id: "invalid", rc.replica_id: "valid"}
    assert _counts(database_url, h, a) == (1, 0, 0)
    assert _counts(database_url, h, b) == (0, 1, 0)
    assert _counts(database_url, h, c) == (1, 0, 0)


def test_disagreement_without_spare_replicas_is_inconclusive(database_url, model_copy, h):
    catalog.add_model(database_url, model_copy(max_replicas=2))
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")
    assert h.fetch(database_url, "SELECT max_replicas FROM datasets WHERE id = %s",
                   (ds.id,)) == [(2,)]

    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b, c = [await h.new_citizen(pool, name) for name in "abc"]
            (ra,), (rb,) = await h.lease(pool, a), await h.lease(pool, b)
            await h.submit(pool, a, ra.replica_id, GOOD)
            accepted, what = await h.submit(pool, b, rb.replica_id, BAD)
            assert accepted and "inconclusive" in what
            later = await h.lease(pool, c, count=100)
            assert ra.duty_id not in {x.duty_id for x in later}
            return ra, rb

    ra, rb = asyncio.run(scenario())
    state, slots, _, error = _duty(database_url, h, ra.duty_id)
    assert (state, slots) == ("inconclusive", 0) and "disagree" in error
    assert _replicas(database_url, h, ra.duty_id) == {ra.replica_id: "returned",
                                                      rb.replica_id: "returned"}
    assert catalog.progress(database_url, ds.id)["inconclusive"] == 1


def test_failures_reopen_slots_until_max_attempts(alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b, c = [await h.new_citizen(pool, name) for name in "abc"]
            (ra,), (rb,) = await h.lease(pool, a), await h.lease(pool, b)
            duty = ra.duty_id

            accepted, what = await h.submit(pool, a, ra.replica_id, exit_code=1)
            assert accepted and "exited with code 1" in what
            assert _duty(database_url, h, duty) == ("pending", 1, 1, "exited with code 1")

            (rc,) = await h.lease(pool, c)  # the failed replica's slot, for another citizen
            assert rc.duty_id == duty
            await h.submit(pool, c, rc.replica_id, exit_code=1)
            assert _duty(database_url, h, duty)[:3] == ("pending", 1, 2)

            await h.submit(pool, b, rb.replica_id, exit_code=None, error="model crashed: boom")
            return a, b, c, ra, rb, rc

    a, b, c, ra, rb, rc = asyncio.run(scenario())
    assert _duty(database_url, h, ra.duty_id) == ("failed", 0, 3, "model crashed: boom")
    assert set(_replicas(database_url, h, ra.duty_id).values()) == {"error"}
    assert [_counts(database_url, h, x)[2] for x in (a, b, c)] == [1, 1, 1]
    (stored,), = h.fetch(database_url, "SELECT error FROM replicas WHERE id = %s", (rb.replica_id,))
    assert stored == "model crashed: boom"
    assert catalog.unfinished_duties(database_url, alphabet.id)[0].error == "model crashed: boom"


def test_only_the_holder_may_submit_and_only_once(alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b, c = [await h.new_citizen(pool, name) for name in "abc"]
            (ra,) = await h.lease(pool, a)

            accepted, what = await h.submit(pool, c, ra.replica_id, BAD)
            assert not accepted and "leased to this citizen" in what
            accepted, _ = await h.submit(pool, a, 10**9, GOOD)  # no such replica at all
            assert not accepted

            assert (await h.submit(pool, a, ra.replica_id, GOOD))[0]
            accepted, what = await h.submit(pool, a, ra.replica_id, BAD)
            assert not accepted and "already" in what

            (rb,) = await h.lease(pool, b)
            assert (await h.submit(pool, b, rb.replica_id, GOOD))[0]
            accepted, _ = await h.submit(pool, b, rb.replica_id, GOOD)
            assert not accepted
            return ra

    ra = asyncio.run(scenario())
    assert _duty(database_url, h, ra.duty_id)[0] == "done"
    assert h.fetch(database_url, "SELECT output::jsonb FROM replicas WHERE id = %s",
                   (ra.replica_id,)) == [(GOOD,)]  # the refused second result changed nothing


# ---------------------------------------------------------------------------------------------
# Releasing lost replicas
# ---------------------------------------------------------------------------------------------

def test_release_by_id_reopens_the_slot_and_counts_a_failure(alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b = await h.new_citizen(pool, "a"), await h.new_citizen(pool, "b")
            (ra,) = await h.lease(pool, a)
            (other,) = await h.lease(pool, a)
            lost = await h.call(pool, work.release, ids=[ra.replica_id], overdue=False,
                                error="citizen disconnected")
            assert lost == 1
            assert await h.call(pool, work.release, ids=[ra.replica_id], overdue=False,
                                error="again") == 0  # already released
            # Both slots of the duty are open again, for anyone but a.
            assert {x.duty_id for x in await h.lease(pool, b, count=2)} == {ra.duty_id, other.duty_id}
            return ra, other

    ra, other = asyncio.run(scenario())
    assert _duty(database_url, h, ra.duty_id) == ("pending", 1, 1, "citizen disconnected")
    assert h.fetch(database_url, "SELECT state::text, error FROM replicas WHERE id = %s",
                   (ra.replica_id,)) == [("expired", "citizen disconnected")]
    assert h.fetch(database_url, "SELECT state::text FROM replicas WHERE id = %s",
                   (other.replica_id,)) == [("leased",)]  # untouched
    assert _duty(database_url, h, other.duty_id)[2] == 0


def test_overdue_started_replicas_are_released_and_fail_the_duty_after_max_attempts(
        alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            citizens = [await h.new_citizen(pool, f"c{i}") for i in range(4)]
            (first,) = await h.lease(pool, citizens[0])
            duty = first.duty_id
            assert await h.call(pool, work.release, ids=[], overdue=True, error="late") == 0

            for attempt, citizen in enumerate(citizens[1:], 1):
                h.execute(database_url, "UPDATE replicas SET deadline = now() - interval '1 second',"
                                        " started_at = now() - interval '2 seconds'"
                                        " WHERE duty_id = %s AND state = 'leased'", (duty,))
                lost = await h.call(pool, work.release, ids=[], overdue=True,
                                    error="deadline passed")
                assert lost >= 1
                state, slots, failures, _ = _duty(database_url, h, duty)
                if failures >= 3:
                    break
                assert state == "pending" and slots == 2
                (again,) = await h.lease(pool, citizen)
                assert again.duty_id == duty
            return duty

    duty = asyncio.run(scenario())
    assert _duty(database_url, h, duty) == ("failed", 0, 3, "deadline passed")
    assert set(_replicas(database_url, h, duty).values()) == {"expired"}


def test_a_late_result_for_an_expired_replica_still_counts(alphabet, database_url, h):
    async def scenario():
        async with h.open_pool(database_url) as pool:
            a, b = await h.new_citizen(pool, "a"), await h.new_citizen(pool, "b")
            (ra,), (rb,) = await h.lease(pool, a), await h.lease(pool, b)
            await h.call(pool, work.release, ids=[ra.replica_id], overdue=False, error="gone")
            assert (await h.submit(pool, a, ra.replica_id, GOOD))[0]
            accepted, what = await h.submit(pool, b, rb.replica_id, GOOD)
            assert accepted and "done" in what
            return ra

    ra = asyncio.run(scenario())
    assert _duty(database_url, h, ra.duty_id)[0] == "done"
