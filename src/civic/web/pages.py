"""The overview: per-model progress, throughput and failures over time, time left, the
servers, citizens and volunteers, and the errors of the last day."""

from __future__ import annotations

from aiohttp import web

from civic.store import history, monitor
from civic.web import charts, render
from civic.web.app import dashboard

routes = web.RouteTableDef()


@routes.get("/", name="overview")
async def overview(request: web.Request) -> web.Response:
    """The status page, with throughput and failures over ``?span=hour|day|week``."""
    span = request.query.get("span", "hour")
    board = dashboard(request)
    data = dict(await board.shared(monitor.status))  # a copy: the shared answer stays as read
    data["history"] = await board.shared(history.throughput, span)
    return render.page(request, "overview.html", data, title="Overview", spans=history.SPANS,
                       throughput_chart=charts.throughput(data["history"]),
                       failures_chart=charts.failures(data["history"]))


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)
