"""Leasing many citizens' requests at once: three round trips for a whole batch.

One round trip reads the requesting citizens and the first waiting duties with what their
replicas so far say about distinct sources; the matching is done here, by the same rules as
the one-citizen query ``lease_duties``. A second locks only the duties chosen (``SKIP LOCKED``:
servers sharing a database never wait on each other, nor lock what they do not take) and reads
them again, to decide afresh on what is now certain; a third writes every replica. A request
the window could not fill falls back to ``lease_duties`` for that citizen, which looks further.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from civic.protocol import Assignment
from civic.store.queries import q

SLACK = 32  # duties read beyond those asked for, for citizens that may not take some


@dataclass(frozen=True)
class _Citizen:
    id: str
    host: str
    volunteer_id: int
    memory: int
    builds: bool
    platform: str
    room: int  # replicas it may lease now (the cap less those it holds)


@dataclass(frozen=True)
class _Duty:
    id: int
    slots: int
    distinct_by: str
    needs_memory: int | None
    needs_build: bool
    platforms: list[str] | None
    citizens: frozenset[str]  # sources of the replicas that count
    hosts: frozenset[str]
    volunteers: frozenset[int]
    failed: frozenset[str]  # citizens that failed it a moment ago

    def takes(self, c: _Citizen, given: list[_Citizen]) -> bool:
        """Whether this citizen may get a replica of this duty (fit, distinct, pause), besides
        those ``given`` it in this batch already."""
        if (len(given) >= self.slots or c.id in self.citizens or c.id in self.failed
                or (self.needs_memory is not None and c.memory != 0
                    and self.needs_memory > c.memory)
                or (self.needs_build and not c.builds)
                or (self.platforms is not None and c.platform not in self.platforms)):
            return False
        by_host = self.distinct_by != "citizen"
        by_volunteer = self.distinct_by == "volunteer"
        if (by_host and c.host in self.hosts) or (by_volunteer and c.volunteer_id in self.volunteers):
            return False
        return not any(g.id == c.id or (by_host and g.host == c.host)
                       or (by_volunteer and g.volunteer_id == c.volunteer_id) for g in given)


async def lease_many(conn: AsyncConnection, requests: Sequence[tuple[str, int]], *,
                     window: float, cap: int, pause: float,
                     datasets: Sequence[int] | None, server_id: str | None = None
                     ) -> list[list[Assignment]]:
    """Lease replicas to citizens, ``(citizen id, count)`` each; see ``work.lease_many``."""
    wanted = sum(count for _, count in requests)
    only = None if datasets is None else list(datasets)
    people, seen = conn.cursor(row_factory=dict_row), conn.cursor(row_factory=dict_row)
    await people.execute(q("lease_citizens"), {"ids": [c for c, _ in requests], "cap": cap,
                                             "server_id": server_id})
    await seen.execute(q("lease_window"), {  # piped with the one above
        "limit": wanted + SLACK, "pause": pause, "datasets": only, "ids": None})
    citizens = {row["id"]: _Citizen(**row) for row in await people.fetchall()}
    candidates = [_candidate(row) for row in await seen.fetchall()]
    whole = len(candidates) < wanted + SLACK  # every waiting duty was in the window
    chosen = sorted({duty for _, duty, _ in _match(requests, citizens, candidates)[0]})
    locked = []
    if chosen:  # lock only those (others' batches take the rest), and decide again on them
        lock, again = conn.cursor(), conn.cursor(row_factory=dict_row)
        await lock.execute(q("lease_lock"), {"ids": chosen})
        await again.execute(q("lease_window"), {  # piped: it runs once the locks are taken
            "limit": len(chosen), "pause": pause, "datasets": only, "ids": chosen})
        mine = {duty_id for (duty_id,) in await lock.fetchall()}
        locked = [_candidate(row) for row in await again.fetchall() if row["id"] in mine]
    taken, unmet = _match(requests, citizens, locked)
    if whole and len(locked) == len(chosen):
        unmet = []  # nothing else is waiting: no need to look further

    leased: list[list[Assignment]] = [[] for _ in requests]
    cursor = conn.cursor(row_factory=dict_row)
    if taken:
        await cursor.execute(q("lease_replicas"), {
            "duty_ids": [d for _, d, _ in taken], "citizen_ids": [c.id for _, _, c in taken],
            "hosts": [c.host for _, _, c in taken],
            "volunteer_ids": [c.volunteer_id for _, _, c in taken], "window": window})
    more = []
    for n in unmet:  # after the replicas above, in the same transaction: it sees them
        extra = conn.cursor(row_factory=dict_row)
        await extra.execute(q("lease_duties"), {
            "citizen_id": requests[n][0], "count": unmet[n], "cap": cap, "window": window,
            "pause": pause, "datasets": only})
        more.append((n, extra))
    if taken:
        request = {(c.id, d): n for n, d, c in taken}  # a citizen gets a duty once at most
        for row in await cursor.fetchall():
            leased[request[row["citizen_id"], row["duty_id"]]].append(assignment(row, window))
    for n, extra in more:
        leased[n] += [assignment(row, window) for row in await extra.fetchall()]
    return leased


def _match(requests: Sequence[tuple[str, int]], citizens: dict[str, _Citizen],
           duties: list[_Duty]) -> tuple[list[tuple[int, int, _Citizen]], dict[int, int]]:
    """Which request gets which duty: each in turn takes the first duties it may, in order.
    Returns (request, duty, citizen) per replica, and what each request still lacks."""
    given: dict[int, list[_Citizen]] = defaultdict(list)  # duty → citizens, in this batch
    room = {c.id: c.room for c in citizens.values()}
    taken: list[tuple[int, int, _Citizen]] = []
    unmet: dict[int, int] = {}
    for n, (citizen_id, count) in enumerate(requests):
        citizen = citizens.get(citizen_id)  # absent: resting, removed, unknown
        if citizen is None:
            continue
        want = min(count, room[citizen_id])
        for duty in duties:
            if want == 0:
                break
            if duty.takes(citizen, given[duty.id]):
                given[duty.id].append(citizen)
                want -= 1
                room[citizen_id] -= 1
                taken.append((n, duty.id, citizen))
        if want:
            unmet[n] = want
    return taken, unmet


def _candidate(row: dict[str, Any]) -> _Duty:
    return _Duty(id=row["id"], slots=row["open_slots"], distinct_by=row["distinct_by"],
                 needs_memory=row["needs_memory"], needs_build=row["needs_build"],
                 platforms=row["platforms"], citizens=frozenset(row["citizens"]),
                 hosts=frozenset(row["hosts"]), volunteers=frozenset(row["volunteers"]),
                 failed=frozenset(row["failed"]))


def assignment(row: dict[str, Any], window: float) -> Assignment:
    """The wire form of a leased replica, from a row of ``lease_replicas``/``lease_duties``."""
    return Assignment(replica_id=row["replica_id"], duty_id=row["duty_id"], model=row["model"],
                      model_version=row["model_version"], bundle_sha256=row["bundle_sha256"],
                      bundle_size=row["bundle_size"], run=row["run"], build=row["build"],
                      timeout=row["timeout"], input=row["input"], memory=row["needs_memory"],
                      start_within=window)
