"""The operators' actions from the dashboard: each changes the database as its CLI command
does and leaves an audit row naming the operator (web:NAME); errors are pages, not
tracebacks. Against a real PostgreSQL, over real HTTP, logged in as a browser would."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from dbkit import execute, fetch
from webkit import Client, dashboard

from civic.store import catalog, operators

JSON = {"Accept": "application/json"}


@pytest.fixture
def web(database_url: str, alphabet) -> Iterator[Client]:
    """A browser logged in as operator ada, on a dashboard over the alphabet dataset."""
    token = operators.add_operator(database_url, "ada")
    with dashboard(database_url) as base:
        client = Client(base)
        done = client.post("/login", {"name": "ada", "token": token}, follow=False)
        assert done.status == 303
        client.csrf = client.get("/").csrf()  # type: ignore[attr-defined]
        yield client


def act(web: Client, path: str, **form: str) -> Any:
    """Post an action form as the page would, and follow it back to the page."""
    return web.post(path, {"csrf": web.csrf, "back": "/", **form})  # type: ignore[attr-defined]


def act_json(web: Client, path: str, **form: str) -> Any:
    return web.post(path, {"csrf": web.csrf, **form}, headers=JSON)  # type: ignore[attr-defined]


def audited(url: str, action: str) -> list[tuple[str, str]]:
    return fetch(url, "SELECT actor, target FROM audit WHERE action = %s ORDER BY id", (action,))


def fail(url: str, duty_id: int, error: str | None, state: str = "failed") -> None:
    execute(url, "UPDATE duties SET state = %s, error = %s, finished_at = now(), open_slots = 0 "
                 "WHERE id = %s", (state, error, duty_id))


def test_pause_resume_and_cancel_a_dataset(database_url: str, alphabet, web: Client) -> None:
    d = alphabet.id
    page = act(web, f"/datasets/{d}/pause")
    assert page.status == 200 and f"dataset {d} paused: 26 duties wait" in page.text
    paused = fetch(database_url, "SELECT paused_at FROM datasets WHERE id = %s", (d,))[0][0]
    assert paused is not None
    assert audited(database_url, "dataset pause") == [("web:ada", f"dataset {d}")]

    again = act_json(web, f"/datasets/{d}/pause")
    assert again.json()["ok"] is True and "already paused" in again.json()["message"]
    assert again.json()["result"]["changed"] is False

    assert "resumed" in act_json(web, f"/datasets/{d}/resume").json()["message"]
    assert fetch(database_url, "SELECT paused_at FROM datasets WHERE id = %s", (d,))[0][0] is None
    assert audited(database_url, "dataset resume") == [("web:ada", f"dataset {d}")]

    answer = act_json(web, f"/datasets/{d}/cancel")
    assert answer.status == 200 and answer.json()["result"]["cancelled"] == 26
    assert fetch(database_url, "SELECT cancelled_at IS NOT NULL FROM datasets")[0][0]
    assert fetch(database_url, "SELECT DISTINCT state::text, error FROM duties") == [
        ("cancelled", "cancelled by web:ada")]
    assert audited(database_url, "dataset cancel") == [("web:ada", f"dataset {d}")]


def test_pause_and_resume_a_model(database_url: str, web: Client) -> None:
    assert act_json(web, "/models/alphabet/pause").json()["ok"] is True
    assert fetch(database_url, "SELECT paused_at IS NOT NULL FROM models") == [(True,)]
    assert act_json(web, "/models/alphabet/resume").json()["ok"] is True
    assert fetch(database_url, "SELECT paused_at IS NOT NULL FROM models") == [(False,)]
    assert [a for a, _ in audited(database_url, "model pause")
            + audited(database_url, "model resume")] == ["web:ada", "web:ada"]


def test_retry_one_duty(database_url: str, web: Client) -> None:
    first, second = [r[0] for r in fetch(database_url,
                                         "SELECT id FROM duties ORDER BY id LIMIT 2")]
    fail(database_url, first, "boom")
    fail(database_url, second, "boom")  # the same error: left alone all the same
    page = act(web, f"/duties/{first}/retry")
    assert page.status == 200 and "re-queued 1 duty (failed)" in page.text
    assert fetch(database_url, "SELECT id, state::text, error FROM duties WHERE id IN (%s, %s) "
                               "ORDER BY id", (first, second)) == [
        (first, "pending", None), (second, "failed", "boom")]
    assert audited(database_url, "duties retry") == [("web:ada", f"duty {first}")]

    pending = act_json(web, f"/duties/{first}/retry")  # pending now: nothing to retry
    assert pending.status == 400 and pending.json()["ok"] is False
    assert "is pending" in pending.json()["error"]
    missing = act(web, "/duties/999999/retry")
    assert missing.status == 404 and "no duty 999999" in missing.text


def test_retry_a_group_of_failures_by_its_exact_error(database_url: str, alphabet,
                                                      web: Client) -> None:
    ids = [r[0] for r in fetch(database_url, "SELECT id FROM duties ORDER BY id LIMIT 4")]
    fail(database_url, ids[0], "exited with code 1")
    fail(database_url, ids[1], "exited with code 1")
    fail(database_url, ids[2], "exited with code 12")  # holds the first group's text
    fail(database_url, ids[3], None, "inconclusive")
    done = act_json(web, "/failures/retry", state="failed", dataset=str(alphabet.id),
                    error="exited with code 1")
    assert done.status == 200 and done.json()["result"]["requeued"][0]["duties"] == 2
    assert fetch(database_url, "SELECT id FROM duties WHERE state = 'failed'") == [(ids[2],)]

    done = act_json(web, "/failures/retry", state="inconclusive", error="")
    assert done.json()["message"] == f"re-queued 1 duty (inconclusive): 1 of dataset {alphabet.id}"
    assert fetch(database_url, "SELECT count(*) FROM duties WHERE state = 'pending'")[0][0] == 25
    assert [a for a, _ in audited(database_url, "duties retry")] == ["web:ada", "web:ada"]

    bad = act_json(web, "/failures/retry", state="done")
    assert bad.status == 400 and "failed or inconclusive" in bad.json()["error"]
    assert act_json(web, "/failures/retry", dataset="x").status == 400
    assert act_json(web, "/failures/retry", dataset="424242").status == 404


def test_block_and_unblock_a_citizen_and_a_volunteer(database_url: str, web: Client,
                                                     h) -> None:
    catalog.add_volunteer(database_url, "vera")

    async def citizen() -> None:
        async with h.open_pool(database_url) as pool:
            await h.new_citizen(pool, "carl")

    asyncio.run(citizen())
    page = act(web, "/citizens/carl/block", reason="lies <b>often</b>")
    assert page.status == 200 and "citizen carl blocked" in page.text
    assert fetch(database_url, "SELECT blocked_at IS NOT NULL, blocked_reason FROM citizens "
                               "WHERE name = 'carl'") == [(True, "lies <b>often</b>")]
    assert act_json(web, "/citizens/carl/unblock").json()["message"] == "citizen carl unblocked"
    assert fetch(database_url, "SELECT blocked_at FROM citizens WHERE name = 'carl'") == [(None,)]

    assert act_json(web, "/volunteers/vera/block").json()["result"]["blocked"] is True
    assert fetch(database_url, "SELECT blocked_at IS NOT NULL FROM volunteers "
                               "WHERE name = 'vera'") == [(True,)]
    assert act_json(web, "/volunteers/vera/unblock").json()["ok"] is True
    assert fetch(database_url, "SELECT blocked_at FROM volunteers WHERE name = 'vera'") == [
        (None,)]
    assert fetch(database_url, "SELECT actor, action, target FROM audit WHERE action LIKE "
                               "'%block' ORDER BY id") == [
        ("web:ada", "citizen block", "citizen carl"),
        ("web:ada", "citizen unblock", "citizen carl"),
        ("web:ada", "volunteer block", "volunteer vera"),
        ("web:ada", "volunteer unblock", "volunteer vera")]


def test_what_does_not_exist_is_404_and_bad_input_400(web: Client) -> None:
    for path in ("/datasets/424242/pause", "/models/nothing/pause", "/citizens/nobody/block",
                 "/volunteers/nobody/unblock", "/duties/424242/retry"):
        page = act(web, path)
        assert page.status == 404 and "Traceback" not in page.text, path
        assert act_json(web, path).json()["ok"] is False, path
    assert act(web, "/datasets/abc/pause").status == 404
    assert act(web, "/datasets/99999999999999999999/pause").status == 404
    long = act_json(web, "/citizens/nobody/block", reason="x" * 501)
    assert long.status == 400 and "--reason" in long.json()["error"]
