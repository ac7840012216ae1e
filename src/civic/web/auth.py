"""Operator logins: the session cookie, the bearer token for scripts, /login and /logout.

Pages are readable by anyone; only operators act. A browser logs in with the name and token
``civic operator add`` printed and gets a session cookie (HttpOnly, SameSite=Strict; Secure
over https) whose session lives in PostgreSQL (``civic.store.operators``), so every server of
the project knows it and a restart logs nobody out. Each session has a CSRF token that every
action form carries. Scripts send ``Authorization: Bearer NAME:TOKEN`` with each request
instead: no cookie, so no CSRF token either.

A wrong name and a wrong token get the same answer, in the same time; an address that keeps
failing is locked out for a while, whatever names it tries.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from civic.store import operators
from civic.web import render
from civic.web.app import Handler, dashboard

COOKIE = "civic_session"
NOTICE = "civic_notice"  # a one-time message for the next page, signed with the session's CSRF
WRONG = "wrong name or token"
NOTICE_MAX = 1000  # characters of a notice kept

routes = web.RouteTableDef()

# The contract's request["operator"] etc. are plain string keys (templates and other modules
# read them so); aiohttp would warn about them on every server's first request.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module=r"civic\.web\.auth")


# ---------------------------------------------------------------------------------------------
# Failed logins per address
# ---------------------------------------------------------------------------------------------

@dataclass
class Throttle:
    """Failed logins by address: ``limit`` failures within ``window`` seconds lock the address
    out for ``lockout`` seconds, doubled by each failure beyond (at most ``window``). Kept in
    memory: a restart forgets them, which costs an attacker a restart they cannot cause."""

    limit: int = 5
    window: float = 900.0
    lockout: float = 30.0
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def wait(self, address: str) -> float:
        """Seconds before ``address`` may try again (0: now)."""
        now = time.monotonic()
        times = self._recent(address, now)
        if len(times) < self.limit:
            return 0.0
        hold = min(self.window, self.lockout * 2 ** (len(times) - self.limit))
        return max(0.0, times[-1] + hold - now)

    def failed(self, address: str) -> None:
        if len(self._failures) > 10_000:  # many addresses over time must not grow it
            now = time.monotonic()
            for known in list(self._failures):
                self._recent(known, now)
            if len(self._failures) > 100_000:  # that many addresses failing: start afresh
                self._failures.clear()
        self._failures.setdefault(address, []).append(time.monotonic())

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


THROTTLE: web.AppKey[Throttle] = web.AppKey("throttle", Throttle)


def _address(request: web.Request) -> str:
    return request.remote or "?"


# ---------------------------------------------------------------------------------------------
# Who is asking
# ---------------------------------------------------------------------------------------------

def _bearer(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        return None
    name, _, token = header[7:].strip().partition(":")
    return name, token


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sets ``request["operator"]`` (None: a visitor), ``request["csrf"]`` (the session's
    token; None for a visitor or a bearer) and ``request["notice"]`` (a message the previous
    action left for this page)."""
    request["operator"] = request["csrf"] = request["notice"] = None
    if request.path.startswith("/static/") or request.path == "/metrics":
        return await handler(request)
    stale = False
    if (bearer := _bearer(request)) is not None:
        refused = await _check_bearer(request, *bearer)
        if refused is not None:
            return refused
    elif sid := request.cookies.get(COOKIE):
        session = await dashboard(request).read(operators.find_session, sid)
        if session is None:
            stale = True  # expired, logged out or removed: the browser forgets it
        else:
            request["operator"], request["csrf"] = session.operator, session.csrf
    shown = NOTICE in request.cookies
    if shown and request["csrf"]:
        request["notice"] = _unsign(request["csrf"], request.cookies[NOTICE])
    response = await handler(request)
    if request["operator"] is not None and not response.prepared:
        response.headers.setdefault("Cache-Control", "no-store")  # it holds a CSRF token
    if stale and not response.prepared:
        response.del_cookie(COOKIE, path="/")
    if shown and NOTICE not in response.cookies and not response.prepared:
        response.del_cookie(NOTICE, path="/")  # shown once
    return response


async def _check_bearer(request: web.Request, name: str, token: str) -> web.Response | None:
    throttle, address = request.app[THROTTLE], _address(request)
    if wait := throttle.wait(address):
        return _locked(request, wait)
    operator = await dashboard(request).read(operators.check, name, token)
    if operator is None:
        throttle.failed(address)
        response = failed(request, 401, WRONG)
        response.headers["WWW-Authenticate"] = 'Bearer realm="civic"'
        return response
    request["operator"] = operator
    return None


def _locked(request: web.Request, wait: float) -> web.Response:
    response = failed(request, 429, f"too many failed logins from your address: try again "
                                    f"in {int(wait) + 1} s")
    response.headers["Retry-After"] = str(int(wait) + 1)
    return response


# ---------------------------------------------------------------------------------------------
# Refusing actions, and answering them
# ---------------------------------------------------------------------------------------------

LOCAL = re.compile(r"/(?![/\\])[^\\\x00-\x1f\x7f]*")


def local(path: str | None, default: str = "/") -> str:
    """``path`` when it is a path on this site ("/..." but not "//host" or "/\\host", no
    scheme, no control character), else ``default``: redirects never leave the dashboard."""
    if path and LOCAL.fullmatch(path) and not urllib.parse.urlsplit(path).netloc:
        return path
    return default


async def refuse(request: web.Request) -> web.Response | None:
    """The answer refusing an action (403) to a visitor, or to a session whose form lacks its
    CSRF token; None when the action may go ahead. Reads the form (``request.post()``)."""
    form = await request.post()
    if request["operator"] is None:
        back = local(str(form.get("back") or ""))
        return failed(request, 403, "log in to do this", login=back)
    if request["csrf"] is not None:  # a session: its forms carry the token
        given = str(form.get("csrf") or request.headers.get("X-CSRF-Token") or "")
        if not hmac.compare_digest(given.encode(), request["csrf"].encode()):
            return failed(request, 403, "this form is out of date (its CSRF token is not "
                                        "this session's): reload the page and try again")
    return None


def failed(request: web.Request, status: int, message: str, *, login: str | None = None,
           ) -> web.Response:
    """An action refused or failed: an error page, or ``{"ok": false, ...}`` as JSON."""
    if render.wants_json(request):
        return web.json_response({"ok": False, "error": message, "message": message,
                                  "status": status}, status=status)
    data = {"error": message, "status": status,
            "login": f"/login?next={urllib.parse.quote(login)}" if login else None}
    return render.page(request, "refused.html", data, title=f"{status}: {message}",
                       status=status)


def done(request: web.Request, message: str, back: str, result: Any = None) -> web.Response:
    """An action done: JSON ``{"ok": true, "message": ...}``, or a 303 back to the page it
    came from, which shows ``message`` once."""
    if render.wants_json(request):
        return web.json_response({"ok": True, "message": message, "result": result},
                                 dumps=render._dumps)
    response = web.Response(status=303, headers={"Location": back})
    if request["csrf"]:
        _cookie(request, response, NOTICE, _sign(request["csrf"], message[:NOTICE_MAX]))
    return response


def _sign(key: str, message: str) -> str:
    mac = hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{mac}.{urllib.parse.quote(message, safe='')}"


def _unsign(key: str, value: str) -> str | None:
    """A notice this session's server left, else None (a notice planted by anyone else)."""
    mac, _, quoted = value.partition(".")
    message = urllib.parse.unquote(quoted)
    good = hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]
    return message if hmac.compare_digest(mac.encode(), good.encode()) else None


def _cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(name, value, path="/", httponly=True, samesite="Strict",
                        secure=request.secure)


# ---------------------------------------------------------------------------------------------
# /login, /logout
# ---------------------------------------------------------------------------------------------

def _login_page(request: web.Request, next_: str, status: int = 200,
                error: str | None = None) -> web.Response:
    return render.page(request, "login.html",
                       {"operator": request["operator"], "next": next_, "error": error},
                       title="Log in", status=status)


@routes.get("/login", name="login")
async def login_form(request: web.Request) -> web.Response:
    return _login_page(request, local(request.query.get("next")))


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    next_ = local(str(form.get("next") or ""))
    throttle, address = request.app[THROTTLE], _address(request)
    if wait := throttle.wait(address):
        return _locked(request, wait)
    name, token = str(form.get("name") or "").strip(), str(form.get("token") or "").strip()
    opened = await dashboard(request).read(operators.log_in, name, token, address)
    if opened is None:
        throttle.failed(address)
        return _login_page(request, next_, 403, WRONG)
    throttle.succeeded(address)
    sid, session = opened
    if render.wants_json(request):
        response: web.Response = web.json_response(
            {"ok": True, "operator": session.operator, "csrf": session.csrf,
             "message": f"logged in as {session.operator}"})
    else:
        response = web.Response(status=303, headers={"Location": next_})
    _cookie(request, response, COOKIE, sid)
    return response


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.Response:
    sid = request.cookies.get(COOKIE)
    if request["csrf"] is not None and sid:
        refused = await refuse(request)
        if refused is not None:
            return refused
        await dashboard(request).read(operators.log_out, sid, _address(request))
    if render.wants_json(request):
        response: web.Response = web.json_response({"ok": True, "message": "logged out"})
    else:
        response = web.Response(status=303, headers={"Location": "/"})
    response.del_cookie(COOKIE, path="/")
    response.del_cookie(NOTICE, path="/")
    return response


def add_routes(app: web.Application) -> None:
    app[THROTTLE] = Throttle()
    app.add_routes(routes)
