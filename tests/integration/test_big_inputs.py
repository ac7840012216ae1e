"""Inputs near the frame limit: a duty frame carries what fits, the rest waits uncharged, and
an input no frame can carry (imported before inputs were limited) fails its duty, saying why."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_server import Client, running_server

from civic import protocol as p
from civic.store import catalog

pytestmark = pytest.mark.integration


def _big_letters(tmp_path, count: int, size: int):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"letter": "a", "pad": f"{i}" * size}) + "\n"
                            for i in range(count)))
    return path


def test_a_duty_frame_carries_what_fits_and_the_rest_waits_uncharged(database_url, tmp_path, h):
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", _big_letters(tmp_path, 3, 7 * 2**20),
                                replication=1, quorum=1)  # 7 MiB each: two fit in 16 MiB

    async def scenario():
        async with running_server(database_url, retry_pause=0.0) as server:
            client = await Client.connect(server)
            await client.hello("greedy")
            first = await client.request(3)
            second = await client.request(3)
            await client.close()
            return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first, p.Duty) and len(first.assignments) == 2
    assert isinstance(second, p.Duty) and len(second.assignments) == 1  # the one given back
    assert h.fetch(database_url, "SELECT max(failures) FROM duties WHERE dataset_id = %s",
                   (ds.id,)) == [(0,)]


def test_an_input_no_frame_can_carry_fails_its_duty_and_keeps_the_citizen(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                replication=1, quorum=1)
    # As an import before inputs were limited could have stored it: 17 MiB in one duty.
    h.execute(database_url, "UPDATE duties SET input = %s::json WHERE id = "
                            "(SELECT min(id) FROM duties WHERE dataset_id = %s)",
              (json.dumps([{"letter": "x" * (17 * 2**20)}]), ds.id))

    async def scenario():
        async with running_server(database_url, retry_pause=0.0) as server:
            client = await Client.connect(server)
            await client.hello("patient")
            answers = [await client.request(1) for _ in range(4)]
            await client.close()
            return answers

    answers = asyncio.run(scenario())
    assert [type(a) for a in answers[:3]] == [p.NoWork] * 3  # never a frame it cannot read
    assert isinstance(answers[3], p.Duty)  # the connection lived on: the next duty
    state, error = h.fetch(database_url, "SELECT state::text, error FROM duties WHERE id = "
                                         "(SELECT min(id) FROM duties WHERE dataset_id = %s)",
                           (ds.id,))[0]
    assert state == "failed" and "input too large to send" in error
