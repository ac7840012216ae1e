"""Operator logins to the dashboard, attacked: actions without a login, without the CSRF token
or with a closed session; wrong names and tokens; open redirects; repeated failures; and the
bearer token scripts use. Against a real PostgreSQL, over real HTTP."""

from __future__ import annotations

import asyncio
import urllib.parse

import pytest
from dbkit import execute, fetch
from webkit import Client, Reply, dashboard

from civic.store import catalog, operators

ALICE = "alice"


@pytest.fixture
def token(database_url: str) -> str:
    return operators.add_operator(database_url, ALICE)


@pytest.fixture
def world(database_url: str, alphabet, h) -> dict[str, str]:
    """Something for every action to act on: a dataset, a failed duty, a citizen, a
    volunteer."""
    duty = fetch(database_url, "SELECT min(id) FROM duties")[0][0]
    execute(database_url, "UPDATE duties SET state = 'failed', error = 'boom', "
                          "finished_at = now(), open_slots = 0 WHERE id = %s", (duty,))
    catalog.add_volunteer(database_url, "vera")

    async def citizen() -> None:
        async with h.open_pool(database_url) as pool:
            await h.new_citizen(pool, "carl")

    asyncio.run(citizen())
    return {"dataset": str(alphabet.id), "duty": str(duty)}


def actions(w: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Every action URL of the contract, with a form that would do it."""
    d = w["dataset"]
    return [
        (f"/datasets/{d}/pause", {}), (f"/datasets/{d}/resume", {}),
        (f"/datasets/{d}/cancel", {}),
        ("/models/alphabet/pause", {}), ("/models/alphabet/resume", {}),
        (f"/duties/{w['duty']}/retry", {}),
        ("/failures/retry", {"state": "failed", "error": "boom"}),
        ("/citizens/carl/block", {"reason": "no"}), ("/citizens/carl/unblock", {}),
        ("/volunteers/vera/block", {"reason": "no"}), ("/volunteers/vera/unblock", {}),
    ]


def untouched(url: str) -> None:
    """Nothing any action changes has changed, and no operation was audited."""
    assert fetch(url, "SELECT count(*) FROM datasets WHERE paused_at IS NOT NULL "
                      "OR cancelled_at IS NOT NULL")[0][0] == 0
    assert fetch(url, "SELECT count(*) FROM models WHERE paused_at IS NOT NULL")[0][0] == 0
    assert fetch(url, "SELECT count(*) FROM duties WHERE state = 'failed'")[0][0] == 1
    assert fetch(url, "SELECT count(*) FROM citizens WHERE blocked_at IS NOT NULL")[0][0] == 0
    assert fetch(url, "SELECT count(*) FROM volunteers WHERE blocked_at IS NOT NULL")[0][0] == 0
    assert fetch(url, "SELECT action FROM audit WHERE action NOT IN "
                      "('operator add', 'operator remove', 'login', 'logout', "
                      "'login failed')") == []


def log_in(web: Client, name: str, token: str, next_: str = "/") -> Reply:
    return web.post("/login", {"name": name, "token": token, "next": next_}, follow=False)


def session(web: Client) -> str:
    return next(c.value for c in web.cookies if c.name == "civic_session")


def test_every_action_is_refused_without_a_login(database_url: str, world, token) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        for path, form in actions(world):
            page = web.post(path, {**form, "back": "/"}, follow=False)
            assert page.status == 403, (path, page.status)
            assert "log in to do this" in page.text, path
            answer = web.post(path, form, headers={"Accept": "application/json"})
            assert answer.status == 403, path
            assert answer.json()["ok"] is False and answer.json()["error"] == "log in to do this"
            # A made-up CSRF token is no login either.
            assert web.post(path, {**form, "csrf": "x"}, follow=False).status == 403, path
        # Read-only visitors see no action form.
        assert 'name="csrf"' not in web.get("/").text
    untouched(database_url)


def test_every_action_is_refused_without_the_sessions_csrf_token(
        database_url: str, world, token) -> None:
    with dashboard(database_url) as base:
        web, other = Client(base), Client(base)
        assert log_in(web, ALICE, token).status == 303
        assert log_in(other, ALICE, token).status == 303
        theirs = other.get("/").csrf()  # another session's token is no good here either
        assert theirs != web.get("/").csrf()
        for path, form in actions(world):
            for csrf in (None, "", "forged", theirs):
                sent = form if csrf is None else {**form, "csrf": csrf}
                page = web.post(path, sent, follow=False)
                assert page.status == 403, (path, csrf, page.status)
                assert "CSRF" in page.text, path
    untouched(database_url)


def test_a_closed_expired_or_removed_session_is_refused(database_url: str, world,
                                                        token) -> None:
    path, form = f"/datasets/{world['dataset']}/pause", {}
    with dashboard(database_url) as base:
        web = Client(base)
        log_in(web, ALICE, token)
        sid, csrf = session(web), web.get("/").csrf()
        logout = web.post("/logout", {"csrf": csrf}, follow=False)
        assert logout.status == 303
        assert "civic_session=;" in logout.headers["Set-Cookie"].replace('""', "")
        # The old cookie, replayed after the logout, is nobody's.
        replay = Client(base)
        cookie = {"Cookie": f"civic_session={sid}"}
        assert replay.post(path, {**form, "csrf": csrf}, headers=cookie).status == 403
        assert "read-only" in replay.get("/", headers=cookie).text

        log_in(web, ALICE, token)
        csrf = web.get("/").csrf()
        execute(database_url, "UPDATE web_sessions SET expires_at = now() - interval '1 s'")
        expired = web.post(path, {**form, "csrf": csrf}, follow=False)
        assert expired.status == 403 and "log in to do this" in expired.text

        log_in(web, ALICE, token)
        csrf = web.get("/").csrf()
        operators.remove_operator(database_url, ALICE, yes=True)
        assert web.post(path, {**form, "csrf": csrf}, follow=False).status == 403
        assert log_in(web, ALICE, token).status == 403  # the token is no good either
    untouched(database_url)


def test_an_unknown_name_and_a_wrong_token_get_the_same_answer(database_url: str,
                                                               token) -> None:
    with dashboard(database_url) as base:
        unknown = log_in(Client(base), "nobody", token, "/failures")
        wrong = log_in(Client(base), ALICE, token[:-2] + "xx", "/failures")
        assert (unknown.status, unknown.text) == (wrong.status, wrong.text)
        assert unknown.status == 403 and "wrong name or token" in unknown.text
        assert "Set-Cookie" not in unknown.headers and "Set-Cookie" not in wrong.headers
        as_json = [Client(base).post("/login", {"name": name, "token": t},
                                     headers={"Accept": "application/json"})
                   for name, t in (("nobody", token), (ALICE, "wrong"))]
        assert (as_json[0].status, as_json[0].text) == (as_json[1].status, as_json[1].text)
    with dashboard(database_url) as base:  # a fresh count of failures (4 so far)
        # Bearer tokens alike.
        bearers = [Client(base).post("/models/alphabet/pause", {}, headers={
            "Authorization": f"Bearer {name}:{t}", "Accept": "application/json"})
            for name, t in (("nobody", token), (ALICE, "wrong"))]
        assert bearers[0].status == bearers[1].status == 401
        assert bearers[0].text == bearers[1].text
    failures = fetch(database_url, "SELECT actor, action, detail::text FROM audit "
                                   "WHERE action = 'login failed'")
    assert len(failures) == 4 and all(token not in str(row) for row in failures)


def test_log_in_and_out(database_url: str, token) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        form = web.get("/login?next=/failures")
        assert 'id="name"' in form.text and 'id="token"' in form.text and "Log in" in form.text
        assert 'value="/failures"' in form.text
        done = log_in(web, ALICE, token, "/failures")
        assert done.status == 303 and done.headers["Location"] == "/failures"
        cookie = done.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http here; https sets it
        sid = session(web)
        assert token not in cookie and sid not in str(fetch(database_url,
                                                           "SELECT * FROM web_sessions"))
        page = web.get("/")
        assert "operator <b>alice</b>" in page.text and "Log out" in page.text
        assert page.headers["Cache-Control"] == "no-store"  # no cache keeps its CSRF token
        assert "logged in as <b>alice</b>" in web.get("/login").text
        web.post("/logout", {"csrf": page.csrf()})
        assert "read-only" in web.get("/").text
        assert fetch(database_url, "SELECT count(*) FROM web_sessions")[0][0] == 0
    rows = fetch(database_url, "SELECT actor, action, target FROM audit ORDER BY id")
    assert [r[1:] for r in rows if r[0] == "web:alice"] == [
        ("login", "operator alice"), ("logout", "operator alice")]


def test_a_login_holds_on_every_server_and_across_restarts(database_url: str, token) -> None:
    with dashboard(database_url) as first:
        web = Client(first)
        log_in(web, ALICE, token)
        sid = session(web)
    with dashboard(database_url) as second:  # another server, or the same one restarted
        page = Client(second).get("/", headers={"Cookie": f"civic_session={sid}"})
        assert "operator <b>alice</b>" in page.text


@pytest.mark.parametrize("target", [
    "//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)",
    "\\\\evil.example", "/\r\nSet-Cookie: x=1", "http:/evil.example", " //evil.example",
])
def test_no_redirect_leaves_the_dashboard(database_url: str, world, token,
                                          target: str) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        assert log_in(web, ALICE, token, target).headers["Location"] == "/"
        assert 'value="/"' in web.get("/login?next=" + urllib.parse.quote(target, safe="")).text
        done = web.post("/models/alphabet/pause", {"csrf": web.get("/").csrf(),
                                                   "back": target}, follow=False)
        assert done.status == 303 and done.headers["Location"] == "/", target


def test_a_local_next_and_back_are_followed(database_url: str, world, token) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        assert log_in(web, ALICE, token, "/citizens?limit=5").headers["Location"] == \
            "/citizens?limit=5"
        done = web.post("/models/alphabet/pause", {"csrf": web.get("/").csrf(),
                                                   "back": "/failures"}, follow=False)
        assert done.headers["Location"] == "/failures"


def test_an_address_that_keeps_failing_is_locked_out(database_url: str, token) -> None:
    with dashboard(database_url) as base:
        for attempt in range(5):
            assert log_in(Client(base), "nobody" if attempt % 2 else ALICE, "wrong").status == 403
        # Now even the right token waits, and the answer says nothing of the name.
        locked = log_in(Client(base), ALICE, token)
        assert locked.status == 429 and "too many failed logins" in locked.text
        unknown = log_in(Client(base), "nobody", token)
        assert (unknown.status, unknown.text) == (locked.status, locked.text)
        bearer = Client(base).get("/", headers={"Authorization": f"Bearer {ALICE}:{token}"})
        assert bearer.status == 429
    assert fetch(database_url, "SELECT count(*) FROM web_sessions")[0][0] == 0


def test_a_script_acts_with_a_bearer_token_and_no_csrf(database_url: str, world,
                                                       token) -> None:
    with dashboard(database_url) as base:
        script = Client(base)
        answer = script.post(f"/datasets/{world['dataset']}/pause", {}, headers={
            "Authorization": f"Bearer {ALICE}:{token}", "Accept": "application/json"})
        assert answer.status == 200, answer.text
        assert answer.json()["ok"] is True and "paused" in answer.json()["message"]
        assert not list(script.cookies)  # no session is opened for a script
    assert fetch(database_url, "SELECT count(*) FROM datasets WHERE paused_at IS NOT NULL"
                 )[0][0] == 1
    assert fetch(database_url, "SELECT actor FROM audit WHERE action = 'dataset pause'"
                 ) == [("web:alice",)]


def test_a_notice_shows_once_and_only_from_this_dashboard(database_url: str, world,
                                                          token) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        log_in(web, ALICE, token)
        page = web.post("/models/alphabet/pause", {"csrf": web.get("/").csrf(), "back": "/"})
        assert page.status == 200 and '<p class="notice">model alphabet paused' in page.text
        assert 'class="notice"' not in web.get("/").text  # once
        planted = web.get("/", headers={"Cookie": f"civic_session={session(web)}; "
                                                  "civic_notice=0.you%20were%20hacked"})
        assert "hacked" not in planted.text


@pytest.mark.parametrize("name", ["a\x00b", "x" * 5000, "<script>", "ALICE", ""])
def test_odd_names_are_wrong_names(database_url: str, token, name: str) -> None:
    with dashboard(database_url) as base:
        odd = log_in(Client(base), name, token)
        wrong = log_in(Client(base), "nobody", token)
    assert (odd.status, odd.text) == (wrong.status, wrong.text) == (403, wrong.text)
    assert fetch(database_url, "SELECT count(*) FROM audit WHERE action = 'login failed'"
                 )[0][0] == 2
