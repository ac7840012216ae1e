"""The overview: per-model progress, throughput and failures over time, time left, the
servers, citizens and volunteers, and the errors of the last day."""

from __future__ import annotations

from aiohttp import web

from civic.store import monitor
from civic.web import render
from civic.web.app import dashboard

routes = web.RouteTableDef()


@routes.get("/", name="overview")
async def overview(request: web.Request) -> web.Response:
    data = await dashboard(request).shared(monitor.status)
    return render.page(request, "overview.html", data, title="Overview")


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)
