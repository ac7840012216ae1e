"""A model's results page (a histogram, a scatter, value counts or a table of the fields a
researcher picks) and its downloads as CSV or JSON Lines, streamed as ``civic results export``
writes them."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from aiohttp import web

from civic.errors import NotFound, UsageError
from civic.store import catalog, history
from civic.web import charts, render
from civic.web.app import dashboard

routes = web.RouteTableDef()
log = logging.getLogger("civic.web")
DOWNLOADS = 2  # downloads streaming at once (each holds a database connection of its own)
CHUNK = 64 * 1024  # characters sent at a time
TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
_LIMIT: web.AppKey[asyncio.Semaphore] = web.AppKey("downloads", asyncio.Semaphore)


def _dataset(request: web.Request) -> int | None:
    text = request.query.get("dataset", "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"dataset must be a dataset id (a number), not {text!r}")
    return int(text)


def _field(request: web.Request, key: str) -> str | None:
    return request.query.get(key) or None


@routes.get("/models/{name}/results", name="results")
async def results(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    data = await dashboard(request).shared(
        history.results, name, _dataset(request), _field(request, "x"), _field(request, "y"),
        _field(request, "chart"))
    chart = None
    if "histogram" in data:
        chart = charts.histogram(data["x"], data["histogram"])
    elif "counts" in data:
        chart = charts.counts(data["x"], data["counts"])
    elif "scatter" in data:
        chart = charts.scatter(data["x"], data["y"], data["scatter"])
    return render.page(request, "results.html", data, title=f"Results of {name}",
                       chart_config=chart, charts=history.CHARTS)


@routes.get(r"/models/{name}/results.{fmt:csv|jsonl}", name="results-download")
async def download(request: web.Request) -> web.StreamResponse:
    """The canonical results of ``?dataset=ID`` (default: as the results page picks), written
    by catalog.export_results in a worker thread and sent as it writes: never held whole."""
    name, fmt = request.match_info["name"], request.match_info["fmt"]
    board = dashboard(request)
    dataset_id = await board.read(history.dataset, name, _dataset(request))
    if dataset_id is None:
        raise NotFound(f"model {name!r} has no dataset yet; import one with: "
                       f"civic dataset import {name} FILE")
    async with request.app[_LIMIT]:
        response = web.StreamResponse(headers={
            "Content-Type": f"{TYPES[fmt]}; charset=utf-8",
            # Sent before the app's middleware could add them: a file, never a page.
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Content-Disposition":
                f'attachment; filename="{_safe(name)}-dataset-{dataset_id}.{fmt}"'})
        await response.prepare(request)
        try:
            await _stream(request, response, board.url, dataset_id, fmt)
            await response.write_eof()
        except ConnectionResetError:  # the reader went away; the export has stopped
            log.info("a download of %s's dataset %s ended early: its reader left", name,
                     dataset_id)
    return response


class _Stop(Exception):
    """The reader went away: the export stops writing."""


class _Pipe:
    """A text file for export_results in a worker thread: buffers CHUNK characters, then hands
    them to the event loop and waits until there is room (a few chunks in flight at most)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
        self._loop, self._queue = loop, queue
        self._parts: list[str] = []
        self._size = 0
        self.stopped = threading.Event()

    def write(self, text: str) -> int:
        self._parts.append(text)
        self._size += len(text)
        if self._size >= CHUNK:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._parts:
            self._put("".join(self._parts))
            self._parts, self._size = [], 0

    def _put(self, item: str | None) -> None:
        if self.stopped.is_set():
            raise _Stop
        asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop).result()

    def end(self) -> None:
        self._put(None)


async def _stream(request: web.Request, response: web.StreamResponse, url: str,
                  dataset_id: int, fmt: str) -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4)
    pipe = _Pipe(asyncio.get_running_loop(), queue)

    def export() -> None:
        try:
            catalog.export_results(url, dataset_id, fmt, pipe)
            pipe.flush()
        except _Stop:
            return
        finally:
            try:
                pipe.end()  # the last chunk, even when the export failed
            except _Stop:
                pass

    writer = asyncio.ensure_future(asyncio.to_thread(export))
    try:
        while (chunk := await queue.get()) is not None:
            await response.write(chunk.encode())
        await writer  # raises what the export raised (the reader sees a cut-off transfer)
    finally:
        # Whatever ended us (a reader gone, an error), the export must not wait on a full queue.
        pipe.stopped.set()
        while not queue.empty():
            queue.get_nowait()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def add_routes(app: web.Application) -> None:
    app[_LIMIT] = asyncio.Semaphore(DOWNLOADS)
    app.add_routes(routes)

