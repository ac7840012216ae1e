"""The dashboard's read pages: a dataset, a duty, citizens (all and one), volunteers, and
failures grouped by error — each as HTML or JSON, with the operator's forms when one is logged
in (the actions they post to live in ``civic.web.actions``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from civic.errors import UsageError
from civic.store import views
from civic.web import render
from civic.web.app import dashboard

routes = web.RouteTableDef()
ID_MAX = 2**63 - 1  # a bigint


def _id(request: web.Request, what: str) -> int:
    """The page's ``{id}`` as a number, or a 400 naming what is wrong."""
    text = request.match_info["id"]
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > ID_MAX:
        raise UsageError(f"a {what} id is a whole number, not {text[:40]!r}")
    return int(text)


async def _read(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    """Read through the dashboard: shared between visitors for a moment, but fresh for an
    operator, who has just changed something and comes back to see it."""
    board = dashboard(request)
    return await (board.read if request.get("operator") else board.shared)(fn, *args)


@routes.get("/datasets/{id}", name="dataset")
async def dataset(request: web.Request) -> web.Response:
    dataset_id = _id(request, "dataset")
    data = await _read(request, views.dataset, dataset_id)
    return render.page(request, "dataset.html", data, title=f"Dataset {dataset_id}",
                       back=request.path_qs)


@routes.get("/duties/{id}", name="duty")
async def duty(request: web.Request) -> web.Response:
    duty_id = _id(request, "duty")
    data = await _read(request, views.duty, duty_id)
    return render.page(request, "duty.html", data, title=f"Duty {duty_id}",
                       back=request.path_qs)


@routes.get("/citizens", name="citizens")
async def citizens(request: web.Request) -> web.Response:
    limit = views.limit(request.query.get("limit"))
    data = await _read(request, views.citizens, limit)
    return render.page(request, "citizens.html", data, title="Citizens", back=request.path_qs)


@routes.get("/citizens/{name}", name="citizen")
async def citizen(request: web.Request) -> web.Response:
    who = request.match_info["name"]
    if not who.strip() or len(who) > 200:
        raise UsageError("a citizen is named by its name, its id or a prefix of its id")
    data = await _read(request, views.citizen, who)
    return render.page(request, "citizen.html", data,
                       title=f"Citizen {data['citizen']['name']}", back=request.path_qs)


@routes.get("/volunteers", name="volunteers")
async def volunteers(request: web.Request) -> web.Response:
    limit = views.limit(request.query.get("limit"))
    data = await _read(request, views.volunteers, limit)
    return render.page(request, "volunteers.html", data, title="Volunteers",
                       back=request.path_qs)


@routes.get("/failures", name="failures")
async def failures(request: web.Request) -> web.Response:
    data = await _read(request, views.failures)
    return render.page(request, "failures.html", data, title="Failures", back=request.path_qs)


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)
