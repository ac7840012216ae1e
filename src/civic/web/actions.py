"""The operators' actions: pause, resume and cancel datasets, pause and resume models, retry
duties, block and unblock citizens and volunteers — the same store functions the CLI and the
console call, so each leaves the same audit row, naming the operator (``web:NAME``).

Every action is a POST refused (403) to visitors and to forms without the session's CSRF
token. A form post is answered with a 303 back to its page (the ``back`` field), which shows
what was done once; a JSON client gets ``{"ok": true, "message": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from civic.errors import CivicError, NotFound, UsageError
from civic.store import audit, control, monitor, people
from civic.store.states import DutyState
from civic.web import auth
from civic.web.app import dashboard

routes = web.RouteTableDef()

ID = r"{id:\d{1,18}}"  # a bigint's digits: anything else is no dataset or duty (404)


async def _act(request: web.Request, back: str, work: Callable[[str], Any],
               say: Callable[[Any], str] = lambda r: r.message) -> web.Response:
    """``work(url)`` as the logged-in operator, in a worker thread; answered as an action."""
    refused = await auth.refuse(request)
    if refused is not None:
        return refused
    form = await request.post()
    back = auth.local(str(form.get("back") or ""), back)
    actor = f"web:{request['operator']}"

    def run(url: str) -> Any:
        with audit.acting_as(actor):  # entered in the thread that writes the audit row
            return work(url)

    try:
        result = await dashboard(request).read(run)
    except NotFound as exc:
        return auth.failed(request, 404, str(exc))
    except UsageError as exc:
        return auth.failed(request, 400, str(exc))
    except CivicError as exc:
        return auth.failed(request, 503, str(exc))
    return auth.done(request, say(result), back, monitor.plain(asdict(result)))


# -- datasets and models ----------------------------------------------------------------------

def _dataset(request: web.Request) -> int:
    return int(request.match_info["id"])


@routes.post(f"/datasets/{ID}/pause")
async def pause_dataset(request: web.Request) -> web.Response:
    d = _dataset(request)
    return await _act(request, f"/datasets/{d}", lambda url: control.pause_dataset(url, d))


@routes.post(f"/datasets/{ID}/resume")
async def resume_dataset(request: web.Request) -> web.Response:
    d = _dataset(request)
    return await _act(request, f"/datasets/{d}", lambda url: control.resume_dataset(url, d))


@routes.post(f"/datasets/{ID}/cancel")
async def cancel_dataset(request: web.Request) -> web.Response:
    d = _dataset(request)
    return await _act(request, f"/datasets/{d}", lambda url: control.cancel_dataset(url, d))


@routes.post("/models/{name}/pause")
async def pause_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return await _act(request, "/", lambda url: control.pause_model(url, name))


@routes.post("/models/{name}/resume")
async def resume_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return await _act(request, "/", lambda url: control.resume_model(url, name))


# -- duties -----------------------------------------------------------------------------------

@routes.post(f"/duties/{ID}/retry")
async def retry_duty(request: web.Request) -> web.Response:
    d = int(request.match_info["id"])
    return await _act(request, f"/duties/{d}", lambda url: control.retry_duty(url, d))


@routes.post("/failures/retry")
async def retry_failures(request: web.Request) -> web.Response:
    """A group of the failures page: its state, dataset (optional) and exact error text
    (optional: without it, every duty of the state and dataset)."""
    form = await request.post()
    state = str(form.get("state") or DutyState.FAILED.value)
    if state not in (DutyState.FAILED, DutyState.INCONCLUSIVE):
        state = "?"  # refused below, after the login and CSRF checks, as a 400
    dataset_text = str(form.get("dataset") or "").strip()
    error = form.get("error")

    def work(url: str) -> control.Retried:
        if state == "?":
            raise UsageError("state must be failed or inconclusive")
        if dataset_text and not (dataset_text.isdigit() and len(dataset_text) <= 18):
            raise UsageError(f"dataset must be a dataset's number, not {dataset_text!r}")
        plan = control.plan_retry(url, state=state,
                                  dataset=int(dataset_text) if dataset_text else None,
                                  error=None if error is None else str(error), exact=True)
        return control.retry(url, plan)

    return await _act(request, "/failures", work)


# -- citizens and volunteers ------------------------------------------------------------------

def _blocked(done: people.Blocked) -> str:
    who = f"{done.kind} {done.name}"
    if done.blocked:
        more = (f"; {done.released} lease(s) it held went to other citizens" if done.released
                else "")
        return (f"{who} blocked" + (" (already; reason updated)" if not done.changed else "")
                + f": refused from now on, dropped at once if connected{more}")
    return f"{who} unblocked" if done.changed else f"{who} was not blocked"


async def _reason(request: web.Request) -> str | None:
    return str((await request.post()).get("reason") or "") or None


@routes.post("/citizens/{name}/block")
async def block_citizen(request: web.Request) -> web.Response:
    name, reason = request.match_info["name"], await _reason(request)
    return await _act(request, "/citizens",
                      lambda url: people.block_citizen(url, name, reason), _blocked)


@routes.post("/citizens/{name}/unblock")
async def unblock_citizen(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return await _act(request, "/citizens",
                      lambda url: people.unblock_citizen(url, name), _blocked)


@routes.post("/volunteers/{name}/block")
async def block_volunteer(request: web.Request) -> web.Response:
    name, reason = request.match_info["name"], await _reason(request)
    return await _act(request, "/volunteers",
                      lambda url: people.block_volunteer(url, name, reason), _blocked)


@routes.post("/volunteers/{name}/unblock")
async def unblock_volunteer(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return await _act(request, "/volunteers",
                      lambda url: people.unblock_volunteer(url, name), _blocked)


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)
