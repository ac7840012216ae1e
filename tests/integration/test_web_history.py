"""The overview's charts: throughput and failures over time, from PostgreSQL, as HTML and JSON."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime

from webkit import Client, dashboard

from civic.store import history

BIN = "date_bin(interval '1 minute', {}, timestamptz '2000-01-01 00:00+00')"


def _per_minute(data: dict, model: str, key: str) -> dict[datetime, int]:
    """A model's non-zero counts of ``key`` by bucket start."""
    hist = data["history"]
    series = next(m for m in hist["models"] if m["name"] == model)[key]
    return {datetime.fromisoformat(at): n for at, n in zip(hist["buckets"], series) if n}


def test_per_minute_counts_equal_the_database(database_url: str, alphabet, h) -> None:
    asyncio.run(h.settle_all(database_url))
    expected = dict(h.fetch(database_url, f"SELECT {BIN.format('finished_at')}, count(*) "
                                        "FROM duties WHERE state = 'done' GROUP BY 1"))
    with dashboard(database_url) as base:
        data = Client(base).json("/")
    hist = data["history"]
    assert hist["span"] == "hour" and len(hist["buckets"]) == 60
    assert [m["name"] for m in hist["models"]] == ["alphabet"]
    assert _per_minute(data, "alphabet", "done") == expected
    assert sum(expected.values()) == 26
    assert not _per_minute(data, "alphabet", "failed_replicas")


def test_failed_and_lost_replicas_are_counted(database_url: str, alphabet, h) -> None:
    async def fail_two() -> None:
        async with h.open_pool(database_url) as pool:
            citizen = await h.new_citizen(pool, "clumsy")
            first, second = await h.lease(pool, citizen, count=2)
            await h.submit(pool, citizen, first.replica_id, exit_code=1,
                           error="exited with code 1")
            # The second one is lost, as the reaper loses a replica past its deadline.
            h.execute(database_url, "UPDATE replicas SET state = 'expired', deadline = now(), "
                    "error = 'deadline passed without a result' WHERE id = %s",
                    (second.replica_id,))

    asyncio.run(fail_two())
    at = "coalesce(returned_at, deadline)"
    expected = {lost: dict(h.fetch(
        database_url, f"SELECT {BIN.format(at)}, count(*) FROM replicas "
        "WHERE error IS NOT NULL AND (state = 'expired') = %s GROUP BY 1", (lost,)))
        for lost in (False, True)}
    with dashboard(database_url) as base:
        data = Client(base).json("/")
    assert _per_minute(data, "alphabet", "failed_replicas") == expected[False]
    assert _per_minute(data, "alphabet", "lost_replicas") == expected[True]
    assert sum(expected[False].values()) == sum(expected[True].values()) == 1
    assert not _per_minute(data, "alphabet", "done")


def test_spans_choose_the_window_and_its_buckets(database_url: str, alphabet, h) -> None:
    asyncio.run(h.settle_all(database_url))
    # Six duties finished three hours ago: out of the last hour, in the last day, per hour.
    h.execute(database_url, "UPDATE duties SET finished_at = now() - interval '3 hours' "
            "WHERE id IN (SELECT id FROM duties ORDER BY id LIMIT 6)")
    with dashboard(database_url) as base:
        web = Client(base)
        hour = web.json("/?span=hour")["history"]
        day = web.json("/?span=day")["history"]
        week = web.json("/?span=week")["history"]
        bad = web.get("/?span=year")
        bad_json = web.get("/?span=year&format=json")
    assert sum(hour["models"][0]["done"]) == 20
    assert (len(day["buckets"]), day["step"], sum(day["models"][0]["done"])) == (24, "1 hour", 26)
    assert len(week["buckets"]) == 168 and sum(week["models"][0]["done"]) == 26
    starts = [datetime.fromisoformat(b) for b in day["buckets"]]
    assert all((b - a).total_seconds() == 3600 for a, b in zip(starts, starts[1:]))
    old = dict(h.fetch(database_url, "SELECT date_bin(interval '1 hour', finished_at, "
                     "timestamptz '2000-01-01 00:00+00'), count(*) FROM duties GROUP BY 1"))
    assert {datetime.fromisoformat(at): n for at, n in zip(day["buckets"], day["models"][0]["done"])
            if n} == old
    assert bad.status == 400 and "span must be one of hour, day, week" in bad.text
    assert bad_json.status == 400 and "span" in bad_json.json()["error"]


def test_overview_draws_the_charts_it_carries_in_json(database_url: str, alphabet, h) -> None:
    asyncio.run(h.settle_all(database_url))
    with dashboard(database_url) as base:
        web = Client(base)
        page = web.get("/?span=day")
        data = web.json("/?span=day")
    assert page.status == 200
    assert 'data-chart="chart-throughput"' in page.text and 'data-chart="chart-failures"' in page.text
    found = re.search(r'<script type="application/json" id="chart-throughput">(.*?)</script>',
                      page.text, re.S)
    config = json.loads(found.group(1))
    assert config["type"] == "line"
    assert config["data"]["datasets"][0]["label"] == "alphabet"
    assert config["data"]["datasets"][0]["data"] == data["history"]["models"][0]["done"]
    assert len(config["data"]["labels"]) == 24
    assert '<a href="?span=week">week</a>' in page.text


def test_history_survives_a_restart_of_the_dashboard(database_url: str, alphabet, h) -> None:
    asyncio.run(h.settle_all(database_url))
    with dashboard(database_url) as base:
        before = Client(base).json("/")["history"]
    with dashboard(database_url) as base:
        after = Client(base).json("/")["history"]
    assert sum(before["models"][0]["done"]) == sum(after["models"][0]["done"]) == 26
    direct = history.throughput(database_url)  # the store function the page reads
    assert [sum(m["done"]) for m in direct["models"]] == [26]


def test_an_empty_database_has_empty_charts(database_url: str) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        data = web.json("/")
        page = web.get("/")
    assert data["history"]["models"] == [] and len(data["history"]["buckets"]) == 60
    assert "Nothing finished or failed in this time." in page.text
