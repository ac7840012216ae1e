"""The overview: per-model progress, throughput and failures over time, time left, the
servers, citizens and volunteers, and the errors of the last day."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from civic.errors import UsageError
from civic.store import history, monitor
from civic.web import charts, render
from civic.web.app import Dashboard, dashboard

routes = web.RouteTableDef()
# A day's or a week's history is shared this many times longer than the rest of the page: its
# hourly counts change slowly, and a week of a busy project is ~0.5 s of database work
# (benchmark: 10^6 duties, 600,000 finished in the week).
LONG = 15


@routes.get("/", name="overview")
async def overview(request: web.Request) -> web.Response:
    """The status page, with throughput and failures over ``?span=hour|day|week``."""
    span = request.query.get("span", "hour")
    board = dashboard(request)
    data = dict(await board.shared(monitor.status))  # a copy: the shared answer stays as read
    data["history"] = await _history(board, span)
    return render.page(request, "overview.html", data, title="Overview", spans=history.SPANS,
                       throughput_chart=charts.throughput(data["history"]),
                       failures_chart=charts.failures(data["history"]))


async def _history(board: Dashboard, span: str) -> dict[str, Any]:
    if span not in history.SPANS:
        raise UsageError(f"span must be one of {', '.join(history.SPANS)}, not {span!r}")
    keep = board.fresh * (1 if span == "hour" else LONG)
    return await board.shared(history.throughput, span, keep=keep)


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)
