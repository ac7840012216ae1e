"""Pages as HTML (jinja2, autoescaped) or as JSON — the same data either way.

A request gets JSON when it asks with ``?format=json`` or prefers ``application/json`` in its
Accept header; every page's data is JSON-ready (``civic.store.monitor.plain``), so ``--json``
scripts and the dashboard read the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from civic import __version__

HERE = Path(__file__).parent
STATIC = HERE / "static"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # everything a model, dataset or citizen wrote shows as text
    undefined=jinja2.StrictUndefined,
    trim_blocks=True, lstrip_blocks=True,
)


def wants_json(request: web.Request) -> bool:
    if request.query.get("format") == "json":
        return True
    accept = request.headers.get("Accept", "")
    return accept.startswith("application/json")


def page(request: web.Request, template: str, data: dict[str, Any], *, title: str,
         status: int = 200, **extra: Any) -> web.Response:
    """``data`` as JSON when asked, else ``template`` rendered with ``data`` and ``extra``
    (``extra`` is for the HTML only: chart configurations, forms)."""
    if wants_json(request):
        return web.json_response(data, status=status, dumps=_dumps)
    html = _env.get_template(template).render(
        data=data, title=title, request=request, version=__version__,
        operator=request.get("operator"), csrf=request.get("csrf"),
        notice=request.get("notice"), static=_static(request), **extra)
    return web.Response(text=html, content_type="text/html", status=status)


def error(request: web.Request, status: int, message: str) -> web.Response:
    return page(request, "error.html", {"error": message, "status": status},
                title=f"{status}: {message}", status=status)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _static(request: web.Request) -> Any:
    """``static('civic.css')``: the file's URL with a version query, so browsers never run an
    old script against a new page."""
    resource = request.app.router["static"]

    def url(name: str) -> str:
        return str(resource.url_for(filename=name))

    return url


# -- filters the templates use ----------------------------------------------------------------

def seconds(value: float | None) -> str:
    """A duration as people say it: 42 s, 3 min, 2 h 5 min, 3 d 4 h."""
    if value is None:
        return "—"
    s = int(round(value))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def rate(value: float | None) -> str:
    if not value:
        return "—"
    return f"{value:,.1f}/s" if value < 100 else f"{value:,.0f}/s"


def number(value: int | float | None) -> str:
    return "—" if value is None else f"{value:,}"


def percent(part: int | float, whole: int | float) -> float:
    return 0.0 if not whole else round(100.0 * part / whole, 1)


_env.filters.update(seconds=seconds, rate=rate, number=number)
_env.globals.update(percent=percent)
