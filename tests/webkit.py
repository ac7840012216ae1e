"""The dashboard in tests: served on 127.0.0.1 from a background event loop, and a small
cookie-keeping HTTP client (stdlib) to read its pages and post its forms."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from civic.web.app import Site, make_app


@contextmanager
def dashboard(database_url: str, server: Any = None, fresh: float = 0.0) -> Iterator[str]:
    """The dashboard on ``database_url`` at a free port; yields its base URL. ``fresh=0``: no
    answer is shared between requests, so a test sees the database as it is now."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[Site, tuple[str, int]]:
        site = Site(make_app(database_url, server, fresh=fresh))
        return site, await site.start("127.0.0.1", 0)

    site, (host, port) = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(site.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@dataclass
class Reply:
    status: int
    headers: Any
    text: str
    url: str

    def json(self) -> Any:
        return json.loads(self.text)

    def csrf(self) -> str:
        """The CSRF token of the page's first form."""
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert found, "the page has no form with a CSRF token"
        return found.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """A browser without the browser: keeps cookies; follows redirects unless told not to."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        cookies = urllib.request.HTTPCookieProcessor(self.cookies)
        self._follow = urllib.request.build_opener(cookies)
        self._stay = urllib.request.build_opener(cookies, _NoRedirect)

    def request(self, method: str, path: str, form: dict[str, Any] | None = None, *,
                headers: dict[str, str] | None = None, follow: bool = True) -> Reply:
        body = urllib.parse.urlencode(form or {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers=headers or {})
        opener = self._follow if follow else self._stay
        try:
            with opener.open(request, timeout=30) as r:
                return Reply(r.status, r.headers, r.read().decode(), r.url)
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.headers, e.read().decode(), e.url)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def json(self, path: str) -> Any:
        reply = self.get(path, headers={"Accept": "application/json"})
        assert reply.status == 200, (reply.status, reply.text)
        return reply.json()

    def post(self, path: str, form: dict[str, Any] | None = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, form, **kwargs)
