"""The dashboard: an aiohttp application served by the server process on its own event loop.

aiohttp because the server already runs an asyncio loop: ``AppRunner`` + ``TCPSite`` add an
HTTP listener to it, with no second process, thread or ASGI server to manage. Pages read the
store through the same synchronous functions the CLI uses, in worker threads, at most
``READERS`` at a time and each answer shared for ``FRESH`` seconds, so any number of open
browsers costs the database a few queries per interval and never takes one of the leasing
pool's connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from civic.errors import CivicError, NotFound, UsageError
from civic.web import render

if TYPE_CHECKING:
    from civic.server.service import Server

DEFAULT_PORT = 24844  # the server's TCP port + 2 (+1 is an installed server's PostgreSQL)
log = logging.getLogger("civic.web")
READERS = 2  # database reads in flight at once for all pages together
FRESH = 2.0  # seconds a page's data is shared between requests

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _Shared:
    """One read's answer, shared by every request within FRESH seconds of it (and by requests
    arriving while it runs)."""

    at: float
    task: asyncio.Future[Any]


@dataclass
class Dashboard:
    """Everything the routes share: the database, the server beside it (for /metrics), and
    the limits that keep page views off the leasing path."""

    url: str
    server: Server | None = None
    fresh: float = FRESH
    _readers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(READERS))
    _shared: dict[tuple[Any, ...], _Shared] = field(default_factory=dict)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(url, *args)`` in a worker thread, at most READERS at a time."""
        async with self._readers:
            return await asyncio.to_thread(fn, self.url, *args)

    async def shared(self, fn: Callable[..., Any], *args: Any, keep: float | None = None) -> Any:
        """``read(fn, *args)``, answered from the last read of the same call when it is less than
        ``keep`` seconds old (default ``fresh``), or still running."""
        key = (fn, *args)
        now = time.monotonic()
        hit = self._shared.get(key)
        if hit is None or now - hit.at > (self.fresh if keep is None else keep) or (
                hit.task.done() and hit.task.exception() is not None):
            if len(self._shared) > 1000:  # many distinct pages over time must not grow it
                self._shared.clear()
            hit = self._shared[key] = _Shared(now, asyncio.ensure_future(self.read(fn, *args)))
        return await asyncio.shield(hit.task)


KEY: web.AppKey[Dashboard] = web.AppKey("dashboard", Dashboard)


def dashboard(request: web.Request) -> Dashboard:
    return request.app[KEY]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CIVIC errors become pages (or JSON) with the right status; nothing shows a traceback."""
    try:
        return await handler(request)
    except NotFound as exc:
        return render.error(request, 404, str(exc))
    except UsageError as exc:
        return render.error(request, 400, str(exc))
    except CivicError as exc:
        return render.error(request, 503, str(exc))


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No inline script, no framing, no sniffing: a model's output that slips past escaping
    still cannot run."""
    response = await handler(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def make_app(url: str, server: Server | None = None, *, fresh: float = FRESH) -> web.Application:
    """The dashboard application on database ``url``; ``server`` adds its figures to /metrics."""
    from civic.web import actions, auth, metrics, pages, results, views

    app = web.Application(middlewares=[_headers, _errors, auth.middleware],
                          client_max_size=64 * 1024)
    app[KEY] = Dashboard(url, server, fresh)
    pages.add_routes(app)
    views.add_routes(app)
    results.add_routes(app)
    auth.add_routes(app)
    actions.add_routes(app)
    metrics.add_routes(app)
    app.router.add_static("/static", render.STATIC, name="static", append_version=True)
    return app


class Site:
    """The dashboard listening on ``host:port`` on the running loop, until ``stop``."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise UsageError(f"the dashboard cannot listen on {host}:{port}: "
                             f"{exc.strerror or exc}") from None
        sockets = self._runner.addresses
        self.address = (str(sockets[0][0]), int(sockets[0][1])) if sockets else (host, port)
        return self.address

    async def stop(self) -> None:
        await self._runner.cleanup()


def beside(host: str, port: int, announce: Callable[[str], None] | None = None,
           ) -> Callable[[Server], Awaitable[Callable[[], Awaitable[None]]]]:
    """For ``civic.server.runner``: the dashboard on ``host:port`` beside the server; its
    address goes to ``announce`` (default: the log)."""

    async def start(server: Server) -> Callable[[], Awaitable[None]]:
        site = Site(make_app(server.url, server))
        address = await site.start(host, port)
        (announce or log.info)(f"dashboard on http://{address[0]}:{address[1]}/")
        return site.stop

    return start


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` as (host, port)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise UsageError(f"--web wants HOST:PORT, not {text!r}") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"--web: port {number} is out of range (0-65535)")
    return host, number
