"""The dashboard's read pages — a dataset, a duty, citizens, one citizen, volunteers, failures —
as HTML and as JSON, against a real PostgreSQL: what they show, their limits, 404 and 400, and
that nothing a model, a citizen or a volunteer wrote can run as a script in them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from webkit import Client, dashboard

from civic import protocol as p
from civic.server import assimilate
from civic.store import catalog, people, views
from civic.web.app import Site, make_app

pytestmark = pytest.mark.integration

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


# ---------------------------------------------------------------------------------------------
# Work done by citizens, through the server's own store functions
# ---------------------------------------------------------------------------------------------

def register(h, url: str, *names: str, **hello: Any) -> list[str]:
    """Citizens (connected now), by name; their ids."""
    from civic.store import work

    async def go() -> list[str]:
        async with h.open_pool(url) as pool:
            ids = []
            for name in names:
                citizen_id, _ = await h.call(pool, work.register, citizen_id=None, secret=None,
                                             name=name, platform="linux/amd64",
                                             address="127.0.0.1:1", **hello)
                ids.append(citizen_id)
            return ids

    return asyncio.run(go())


def work(h, url: str, citizen_id: str, count: int, *, error: str | None = None,
         output: Any = None, stderr: str = "tail", submit: bool = True) -> list[p.Assignment]:
    """Lease ``count`` duties to a citizen and answer each: ``error``, or ``output`` (by
    default the right one), or nothing (``submit=False``: they stay out)."""
    async def go() -> list[p.Assignment]:
        async with h.open_pool(url) as pool:
            got = await h.lease(pool, citizen_id, count=count)
            for a in got if submit else ():
                answer = None if error else (output if output is not None
                                             else h.alphabet_output(a.input))
                result = p.Result(a.replica_id, 1 if error else 0, output=answer, error=error,
                                  stderr_tail=stderr, elapsed=0.25)
                await h.call(pool, assimilate.submit, citizen_id, result)
            return got

    return asyncio.run(go())


def fail(h, url: str, count: int, error: str, *names: str) -> list[str]:
    """The first ``count`` waiting duties fail: three citizens (max_attempts) each fail them
    with ``error``; their ids."""
    ids = register(h, url, *(names or ("f1", "f2", "f3")))
    for citizen_id in ids:
        work(h, url, citizen_id, count, error=error, stderr=f"Traceback\n{error}")
    return ids


def has_forms(text: str) -> bool:
    return 'method="post"' in text or 'name="csrf"' in text


# ---------------------------------------------------------------------------------------------
# /datasets/{id}
# ---------------------------------------------------------------------------------------------

def test_dataset_page_shows_figures_states_waiting_and_failures(alphabet, database_url, h):
    fail(h, database_url, 2, "exited with code 3")
    one, two = register(h, database_url, "one", "two")
    work(h, database_url, one, 3)
    work(h, database_url, two, 3)  # duties 3-5 done
    with dashboard(database_url) as base:
        web_ = Client(base)
        page = web_.get(f"/datasets/{alphabet.id}")
        data = web_.json(f"/datasets/{alphabet.id}")
    assert page.status == 200
    assert data["states"] == {"pending": 21, "done": 3, "inconclusive": 0, "failed": 2,
                              "cancelled": 0}
    assert (data["model"], data["duties"], data["done"], data["failed"]) == ("alphabet", 26, 3, 2)
    assert data["rate"] is None or data["rate"] > 0
    assert [f["id"] for f in data["failures"]] == [2, 1]  # the latest first
    assert data["failures"][0]["error"] == "exited with code 3"
    assert data["oldest_waiting_duty"] == 6 and data["out"] == 0
    assert data["waiting"] == []  # five connected citizens may lease the rest
    json.dumps(data)
    assert 'href="/duties/1"' in page.text and 'href="/duties/2"' in page.text
    assert "exited with code 3" in page.text and "alphabet" in page.text
    assert not has_forms(page.text)  # no operator: no buttons
    assert "Pause" not in page.text and "Cancel" not in page.text


def test_dataset_page_says_why_duties_wait(alphabet, database_url, h):
    with dashboard(database_url) as base:
        web_ = Client(base)
        (w,) = web_.json(f"/datasets/{alphabet.id}")["waiting"]
        assert w["kind"] == "no-citizen" and w["duties"] == 26
        assert "no citizen is connected" in web_.get(f"/datasets/{alphabet.id}").text
        h.execute(database_url, "UPDATE datasets SET paused_at = now()")
        data = web_.json(f"/datasets/{alphabet.id}")
        assert data["paused"] and data["waiting"] == []
        assert "is paused" in web_.get(f"/datasets/{alphabet.id}").text
        h.execute(database_url, "UPDATE datasets SET paused_at = NULL, cancelled_at = now()")
        assert "was cancelled" in web_.get(f"/datasets/{alphabet.id}").text


def test_dataset_page_shows_only_its_latest_failures(alphabet, database_url, h, monkeypatch):
    monkeypatch.setattr(views, "DATASET_FAILURES", 3)
    h.execute(database_url, "UPDATE duties SET state = 'failed', open_slots = 0, error = 'x', "
                            "finished_at = now() - make_interval(secs => 100 - id) "
                            "WHERE id <= 10")
    with dashboard(database_url) as base:
        data = Client(base).json(f"/datasets/{alphabet.id}")
    assert [f["id"] for f in data["failures"]] == [10, 9, 8]
    assert data["failed"] == 10


# ---------------------------------------------------------------------------------------------
# /duties/{id}
# ---------------------------------------------------------------------------------------------

def test_duty_page_shows_replicas_outputs_stderr_and_canonical(alphabet, database_url, h):
    one, two = register(h, database_url, "one", "two")
    work(h, database_url, one, 1, stderr="warming up\nall good")
    work(h, database_url, two, 1)
    with dashboard(database_url) as base:
        web_ = Client(base)
        page = web_.get("/duties/1")
        data = web_.json("/duties/1")
    assert page.status == 200
    assert data["state"] == "done" and data["records"] == 1
    assert json.loads(data["input_preview"]) == [{"letter": "a"}]
    assert json.loads(data["canonical_preview"]) == [{"original_letter": "a", "letter": "b"}]
    assert [r["citizen"] for r in data["replicas"]] == ["one", "two"]
    assert [r["volunteer"] for r in data["replicas"]] == ["lab", "lab"]
    assert data["replicas"][0]["stderr_tail"] == "warming up\nall good"
    assert all(r["exit_code"] == 0 and r["state"] == "valid" for r in data["replicas"])
    for citizen_id in (one, two):
        assert f'href="/citizens/{citizen_id}"' in page.text
    assert f'href="/datasets/{alphabet.id}"' in page.text
    assert re.search(r"<pre>warming up\nall good</pre>", page.text)
    assert "canonical" in page.text and "&#34;original_letter&#34;" in page.text
    assert not has_forms(page.text)


def test_duty_page_says_why_it_waits_and_what_is_out(alphabet, database_url, h):
    (one,) = register(h, database_url, "one")
    work(h, database_url, one, 1, submit=False)
    with dashboard(database_url) as base:
        web_ = Client(base)
        data = web_.json("/duties/1")
        page = web_.get("/duties/1")
    assert data["state"] == "pending"
    assert [w["kind"] for w in data["waiting"]][0] == "out"
    assert data["replicas"][0]["state"] == "leased"
    assert "replica(s) out" in page.text and "Why it waits" in page.text


def test_duty_page_cuts_a_large_input_and_says_so(alphabet, database_url, h):
    records = [{"letter": "x" * 100, "n": i} for i in range(200)]  # ~22 KB of JSON
    h.execute(database_url, "UPDATE duties SET input = %s WHERE id = 1", (json.dumps(records),))
    with dashboard(database_url) as base:
        web_ = Client(base)
        data = web_.json("/duties/1")
        page = web_.get("/duties/1")
    whole = len(json.dumps(records, ensure_ascii=False))
    assert data["records"] == 200 and data["input_chars"] == whole
    assert len(data["input_preview"]) == views.PREVIEW < whole
    assert "input" not in data  # the page never carries the whole input
    assert f"the first {views.PREVIEW:,} of {whole:,} characters" in page.text
    assert "it was cut" in page.text


def test_failed_duty_page_shows_its_error_and_no_retry_without_login(alphabet, database_url,
                                                                       h):
    fail(h, database_url, 1, "exited with code 3")
    with dashboard(database_url) as base:
        web_ = Client(base)
        data = web_.json("/duties/1")
        page = web_.get("/duties/1")
    assert data["state"] == "failed" and data["error"] == "exited with code 3"
    assert len(data["replicas"]) == 3 and {r["state"] for r in data["replicas"]} == {"error"}
    assert "exited with code 3" in page.text and "Traceback" in page.text
    assert "Retry" not in page.text and not has_forms(page.text)


# ---------------------------------------------------------------------------------------------
# 404 and 400
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, status, message", [
    ("/datasets/999", 404, "no dataset 999"),
    ("/duties/999", 404, "no duty 999"),
    ("/citizens/nobody", 404, "no citizen named or numbered"),
    ("/datasets/abc", 400, "a dataset id is a whole number"),
    ("/datasets/-1", 400, "a dataset id is a whole number"),
    ("/duties/1.5", 400, "a duty id is a whole number"),
    ("/duties/99999999999999999999", 400, "a duty id is a whole number"),
    ("/duties/%D9%A3", 400, "a duty id is a whole number"),  # an Arabic-Indic digit
    ("/citizens?limit=0", 400, "limit must be from 1"),
    ("/citizens?limit=many", 400, "limit must be a whole number"),
    ("/volunteers?limit=100000", 400, "limit must be from 1"),
])
def test_unknown_ids_are_404_and_malformed_ones_400(alphabet, database_url, path, status,
                                                    message):
    with dashboard(database_url) as base:
        web_ = Client(base)
        page = web_.get(path)
        answer = web_.get(path, headers={"Accept": "application/json"})
    assert page.status == status and message in page.text
    assert "Traceback" not in page.text
    assert answer.status == status and message in answer.json()["error"]


# ---------------------------------------------------------------------------------------------
# /citizens, /citizens/{name}, /volunteers
# ---------------------------------------------------------------------------------------------

def test_citizens_page_lists_the_latest_contact_first_within_its_limit(alphabet, database_url,
                                                                       h):
    token = catalog.add_volunteer(database_url, "alice")
    a, b = register(h, database_url, "a", "b")
    (c,) = register(h, database_url, "c", token=token)
    work(h, database_url, a, 2)
    work(h, database_url, b, 2)  # duties 1-2 done: a and b each have 2 valid results
    h.execute(database_url, "UPDATE citizens SET last_seen_at = now() - interval '1 hour', "
                            "connected = false WHERE id = %s", (a,))
    h.execute(database_url, "UPDATE citizens SET last_seen_at = now() - interval '1 minute' "
                            "WHERE id = %s", (b,))
    h.execute(database_url, "UPDATE citizens SET cooldown_until = now() + interval '5 minutes' "
                            "WHERE id = %s", (b,))
    people.block_citizen(database_url, "c", "too noisy")
    with dashboard(database_url) as base:
        web_ = Client(base)
        data = web_.json("/citizens")
        page = web_.get("/citizens")
        two = web_.json("/citizens?limit=2")
        short = web_.get("/citizens?limit=1")
    rows = data["citizens"]
    assert [r["name"] for r in rows] == ["c", "b", "a"] and data["total"] == 3
    by = {r["name"]: r for r in rows}
    assert (by["a"]["valid_count"], by["a"]["share"], by["a"]["connected_now"]) == (2, 0.5, False)
    assert by["b"]["resting"] and by["b"]["resting_for"] > 200 and by["b"]["connected_now"]
    assert by["c"]["blocked"] and by["c"]["blocked_reason"] == "too noisy"
    assert by["c"]["volunteer"] == "alice"
    assert [r["name"] for r in two["citizens"]] == ["c", "b"] and two["limit"] == 2
    assert two["total"] == 3
    assert "too noisy" in page.text and "resting" in page.text and "50.0%" in page.text
    for citizen_id in (a, b, c):
        assert f'href="/citizens/{citizen_id}"' in page.text
    assert short.text.count('href="/citizens/') == 1  # one row
    assert "1 of 3 citizens" in short.text
    assert not has_forms(page.text) and ">Block</button>" not in page.text


def test_citizen_page_by_name_id_or_id_prefix_with_its_latest_replicas(alphabet, database_url,
                                                                       h, monkeypatch):
    one, two = register(h, database_url, "one", "two")
    work(h, database_url, one, 3)
    work(h, database_url, two, 1)
    work(h, database_url, one, 1, submit=False)  # one holds duty 4 now
    with dashboard(database_url) as base:
        web_ = Client(base)
        by_name = web_.json("/citizens/one")
        for who in (one, one[:8], one.upper()):
            same = web_.json(f"/citizens/{who}")
            assert same["citizen"]["id"] == one and same["replicas"] == by_name["replicas"]
        page = web_.get("/citizens/one")
        monkeypatch.setattr(views, "CITIZEN_REPLICAS", 2)
        two_only = web_.json("/citizens/one")
    assert by_name["citizen"]["id"] == one and by_name["citizen"]["valid_count"] == 1
    replicas = by_name["replicas"]
    assert [r["duty_id"] for r in replicas] == [4, 3, 2, 1]  # the latest first
    assert replicas[0]["state"] == "leased" and replicas[-1]["state"] == "valid"
    assert replicas[0]["model"] == "alphabet" and replicas[0]["dataset_id"] == alphabet.id
    assert [r["duty_id"] for r in two_only["replicas"]] == [4, 3]
    assert 'href="/duties/4"' in page.text and f'href="/datasets/{alphabet.id}"' in page.text
    assert not has_forms(page.text)


def test_citizen_page_looks_back_only_so_far(alphabet, database_url, h, monkeypatch):
    one, two = register(h, database_url, "one", "two")
    work(h, database_url, one, 1)
    work(h, database_url, two, 5)
    monkeypatch.setattr(views, "REPLICA_WINDOW", 3)  # one's replica is 5 replicas ago
    with dashboard(database_url) as base:
        data = Client(base).json("/citizens/one")
    assert data["replicas"] == [] and data["replica_window"] == 3


def test_a_name_several_citizens_share_asks_for_an_id(database_url, h):
    first, second = register(h, database_url, "twin", "twin")
    with dashboard(database_url) as base:
        web_ = Client(base)
        page = web_.get("/citizens/twin")
        assert web_.json(f"/citizens/{second}")["citizen"]["id"] == second
    assert page.status == 400 and "2 citizens match" in page.text
    assert first in page.text and second in page.text


def test_volunteers_page_totals_their_citizens(alphabet, database_url, h):
    alice, bob = (catalog.add_volunteer(database_url, name) for name in ("alice", "bob"))
    catalog.add_volunteer(database_url, "carol")
    catalog.remove_volunteer(database_url, "carol")
    a1, a2 = register(h, database_url, "a1", "a2", token=alice)
    (b1,) = register(h, database_url, "b1", token=bob)
    work(h, database_url, a1, 2)
    work(h, database_url, b1, 2)  # duties 1-2: alice and bob agree
    work(h, database_url, a2, 1, error="exited with code 1")
    people.block_volunteer(database_url, "bob", "left the lab")
    with dashboard(database_url) as base:
        web_ = Client(base)
        data = web_.json("/volunteers")
        page = web_.get("/volunteers")
        one = web_.json("/volunteers?limit=1")
    by = {v["name"]: v for v in data["volunteers"]}
    assert set(by) == {"lab", "alice", "bob", "carol"} and data["total"] == 4
    assert data["volunteers"][-1]["name"] == "carol" and by["carol"]["removed"]
    assert (by["alice"]["citizens"], by["alice"]["connected"], by["alice"]["valid"],
            by["alice"]["errors"], by["alice"]["share"]) == (2, 2, 2, 1, 0.5)
    assert by["bob"]["blocked"] and by["bob"]["blocked_reason"] == "left the lab"
    assert by["lab"]["citizens"] == 0 and by["lab"]["last_seen_at"] is None
    assert len(one["volunteers"]) == 1 and one["total"] == 4
    assert "left the lab" in page.text and "50.0%" in page.text
    assert not has_forms(page.text) and "Unblock" not in page.text


# ---------------------------------------------------------------------------------------------
# /failures
# ---------------------------------------------------------------------------------------------

def test_failures_are_grouped_by_model_dataset_and_error(alphabet, database_url, h):
    fail(h, database_url, 3, "exited with code 3")
    fail(h, database_url, 1, "timed out after 30s", "g1", "g2", "g3")
    h.execute(database_url, "UPDATE duties SET state = 'inconclusive', open_slots = 0, "
                            "finished_at = now(), error = 'replicas disagree: no quorum within "
                            "max_replicas' WHERE id = 10")
    with dashboard(database_url) as base:
        web_ = Client(base)
        data = web_.json("/failures")
        page = web_.get("/failures")
    groups = [(g["model"], g["dataset"], g["state"], g["error"], g["count"])
              for g in data["groups"]]
    assert groups[0] == ("alphabet", alphabet.id, "failed", "exited with code 3", 3)
    assert sorted(groups[1:]) == [
        ("alphabet", alphabet.id, "failed", "timed out after 30s", 1),
        ("alphabet", alphabet.id, "inconclusive",
         "replicas disagree: no quorum within max_replicas", 1)]
    first = data["groups"][0]
    assert first["example"] in (1, 2, 3) and first["last_at"] and not first["error_cut"]
    assert data["scanned"] == 5 and not data["capped"]
    assert f'href="/duties/{first["example"]}"' in page.text
    assert f'href="/datasets/{alphabet.id}"' in page.text
    assert "timed out after 30s" in page.text
    assert not has_forms(page.text) and "Retry" not in page.text


def test_failures_page_groups_only_the_latest_failures(alphabet, database_url, h, monkeypatch):
    h.execute(database_url, "UPDATE duties SET state = 'failed', open_slots = 0, "
                            "error = CASE WHEN id <= 5 THEN 'old' ELSE 'new' END, "
                            "finished_at = now() - make_interval(secs => 100 - id) "
                            "WHERE id <= 8")
    monkeypatch.setattr(views, "FAILURE_SCAN", 4)
    with dashboard(database_url) as base:
        web_ = Client(base)
        data = web_.json("/failures")
        monkeypatch.setattr(views, "FAILURE_GROUPS", 1)
        one = web_.json("/failures")
        page = web_.get("/failures")
    assert [(g["error"], g["count"], g["example"]) for g in data["groups"]] == [
        ("new", 3, 8), ("old", 1, 5)]
    assert data["scanned"] == 4 and data["capped"]
    assert [g["error"] for g in one["groups"]] == ["new"]
    assert "counted over the latest 4 such duties" in page.text


def test_failures_page_cuts_a_long_error(alphabet, database_url, h):
    error = "no such file: " + "x" * 70_000  # the server keeps 64 KiB of it
    fail(h, database_url, 1, error)
    with dashboard(database_url) as base:
        web_ = Client(base)
        (group,) = web_.json("/failures")["groups"]
        duty = web_.json("/duties/1")
        page = web_.get("/failures")
    assert group["error"] == error[:views.ERROR_CHARS] and group["error_cut"]
    assert group["error_chars"] == 64 * 1024
    assert duty["error"] == error[:views.ERROR_CHARS] and duty["error_chars"] == 64 * 1024
    assert len(page.text) < 20_000


def test_no_failures(alphabet, database_url):
    with dashboard(database_url) as base:
        web_ = Client(base)
        assert web_.json("/failures") == {"groups": [], "scanned": 0, "capped": False,
                                          "scan": views.FAILURE_SCAN,
                                          "shown": views.FAILURE_GROUPS}
        assert "No duty failed." in web_.get("/failures").text


# ---------------------------------------------------------------------------------------------
# Escaping: what models, citizens and volunteers write shows as text
# ---------------------------------------------------------------------------------------------

def test_every_page_shows_what_models_and_citizens_wrote_as_text(alphabet, database_url, h):
    token = catalog.add_volunteer(database_url, "mallory")
    # A volunteer's name is checked when it is added; one written straight into the database
    # must be escaped all the same.
    h.execute(database_url, "UPDATE volunteers SET name = %s WHERE name = 'mallory'", (XSS,))
    evil, good = register(h, database_url, XSS, "good", token=token)
    # A model output, a stderr tail and an error (through real submissions), a duty's input.
    work(h, database_url, evil, 1, output=[{"letter": XSS}], stderr=f"oops {XSS}")
    work(h, database_url, good, 1, output=[{"letter": XSS}])
    for citizen_id in register(h, database_url, "f1", "f2", "f3"):
        work(h, database_url, citizen_id, 1, error=f"exited: {XSS}", stderr=XSS)
    h.execute(database_url, "UPDATE duties SET input = %s WHERE id = 1",
              (json.dumps([{"letter": XSS}]),))
    h.execute(database_url, "UPDATE citizens SET blocked_at = now(), blocked_reason = %s "
                            "WHERE id = %s", (XSS, evil))
    h.execute(database_url, "UPDATE volunteers SET blocked_at = now(), blocked_reason = %s "
                            "WHERE name = %s", (XSS, XSS))
    h.execute(database_url, "UPDATE datasets SET source = %s", (XSS,))
    with dashboard(database_url) as base:
        web_ = Client(base)
        assert web_.json("/duties/1")["canonical_preview"] == json.dumps([{"letter": XSS}])
        assert web_.json("/duties/2")["state"] == "failed"
        pages = {path: web_.get(path) for path in (
            "/duties/1", "/duties/2", f"/datasets/{alphabet.id}", "/citizens",
            f"/citizens/{evil}", "/volunteers", "/failures")}
    for path, page in pages.items():
        assert page.status == 200, path
        assert XSS not in page.text, path
        assert "<script>alert" not in page.text, path
        assert ESCAPED in page.text, path
    assert pages["/duties/1"].text.count(ESCAPED) >= 4  # input, two outputs, stderr, citizen
    assert f"oops {ESCAPED}" in pages["/duties/1"].text
    assert f"exited: {ESCAPED}" in pages["/duties/2"].text
    assert f"exited: {ESCAPED}" in pages["/failures"].text
    assert pages["/citizens"].text.count(ESCAPED) >= 3  # name, volunteer, reason


# ---------------------------------------------------------------------------------------------
# The operator's forms (posted to civic.web.actions, tested there): rendered only for one
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def operator_dashboard(database_url: str) -> Iterator[str]:
    """The dashboard as an operator sees it: a stand-in for the auth middleware sets what it
    sets (request["operator"] and request["csrf"]); the actions are not served here."""
    @web.middleware
    async def logged_in(request: web.Request, handler: Any) -> web.StreamResponse:
        request["operator"], request["csrf"] = "olga", "token-123"
        return await handler(request)

    app = make_app(database_url, fresh=0.0)
    app.middlewares.append(logged_in)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    site = Site(app)
    host, port = asyncio.run_coroutine_threadsafe(site.start("127.0.0.1", 0), loop).result(30)
    try:
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(site.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def forms(text: str) -> list[dict[str, str]]:
    """Each form of a page: its action, its button, and its hidden fields."""
    found = []
    for form in re.findall(r"<form .*?</form>", text, re.S):
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
        fields["action"] = re.search(r'action="([^"]+)"', form).group(1)
        fields["button"] = re.search(r"<button[^>]*>([^<]+)</button>", form).group(1)
        fields["confirm"] = "data-confirm" in form
        found.append(fields)
    return [f for f in found if f["action"] != "/logout"]


@pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")
def test_an_operator_sees_the_forms_of_the_contract(alphabet, database_url, h):
    fail(h, database_url, 1, 'exited "3" & <bad>')
    catalog.add_volunteer(database_url, "alice")
    people.block_volunteer(database_url, "alice")
    with operator_dashboard(database_url) as base:
        web_ = Client(base)
        dataset = forms(web_.get(f"/datasets/{alphabet.id}").text)
        h.execute(database_url, "UPDATE datasets SET paused_at = now()")
        paused = forms(web_.get(f"/datasets/{alphabet.id}").text)
        duty = forms(web_.get("/duties/1").text)
        waiting = forms(web_.get("/duties/2").text)
        failures = forms(web_.get("/failures").text)
        citizens = forms(web_.get("/citizens?limit=2").text)
        volunteers = forms(web_.get("/volunteers").text)
    back = f"/datasets/{alphabet.id}"
    assert [(f["action"], f["button"], f["back"], f["csrf"], f["confirm"]) for f in dataset] == [
        (f"{back}/pause", "Pause", back, "token-123", False),
        (f"{back}/cancel", "Cancel", back, "token-123", True)]
    assert [f["button"] for f in paused] == ["Resume", "Cancel"]
    assert [(f["action"], f["button"], f["back"]) for f in duty] == [
        ("/duties/1/retry", "Retry", "/duties/1")]
    assert waiting == []  # a pending duty has nothing to retry
    (group,) = failures
    assert (group["action"], group["button"], group["state"], group["dataset"]) == (
        "/failures/retry", "Retry", "failed", str(alphabet.id))
    assert group["error"] == "exited &#34;3&#34; &amp; &lt;bad&gt;"  # the exact text, escaped
    assert [f["button"] for f in citizens] == ["Block", "Block"]
    assert all(f["back"] == "/citizens?limit=2" for f in citizens)
    assert all(re.fullmatch(r"/citizens/[0-9a-f-]{36}/block", f["action"]) for f in citizens)
    assert {(f["action"], f["button"]) for f in volunteers} == {
        ("/volunteers/lab/block", "Block"), ("/volunteers/alice/unblock", "Unblock")}
