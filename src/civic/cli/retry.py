"""``civic duties retry``: re-queue failed, inconclusive or cancelled duties with fresh
attempts, after saying how many and asking."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from civic.cli.context import Context
from civic.errors import UsageError
from civic.store import control
from civic.store.states import DutyState


def retry(
    ctx: typer.Context,
    dataset: Annotated[Optional[int], typer.Option(
        "--dataset", help="Only this dataset's duties (default: every dataset's).")] = None,
    state: Annotated[str, typer.Option(
        "--state", help="Retry the duties in this state: failed, inconclusive or "
                        "cancelled.")] = DutyState.FAILED.value,
    error: Annotated[Optional[str], typer.Option(
        "--error", help="Only duties whose error contains TEXT (any case).",
        metavar="TEXT")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Re-queue failed (or inconclusive, cancelled) duties with fresh attempts.

    Counts the matching duties per dataset, asks (on a terminal; --yes otherwise), then
    re-queues exactly those: pending again, failures and error cleared, the replicas their
    quorum needs open. Earlier results are kept for history but count no more. A cancelled
    dataset whose duties are retried runs again; a paused one waits for resume."""
    c: Context = ctx.obj
    url = c.database_url()
    plan = control.plan_retry(url, state=state, dataset=dataset, error=error)
    match = f"{plan.description} {'matches' if plan.total == 1 else 'match'}"
    if not plan.total:
        if json:
            c.print_json({"plan": plan, "requeued": [], "total": 0})
        else:
            c.out.print(f"no duty to retry: {match}", highlight=False)
        return
    if not json:
        for g in plan.groups:
            c.out.print(f"dataset {g.dataset} ({g.model} v{g.model_version}): {g.duties} "
                        f"{plan.state}", highlight=False)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"{match}; nothing re-queued — pass --yes to "
                             "re-queue them")
        if not typer.confirm(f"Re-queue {plan.description}?", default=False, err=True):
            c.note("nothing re-queued")
            raise typer.Exit(1)
    done = control.retry(url, plan)
    if json:
        c.print_json({"plan": plan, "requeued": done.requeued, "total": done.total,
                      "paused": done.paused})
    else:
        c.out.print(done.message, highlight=False)
