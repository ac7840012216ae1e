"""``civic run``: the whole job on this machine in one command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from civic.cli.context import Context
from civic.errors import RunIncomplete, UsageError
from civic.job import run_job
from civic.store import catalog
from civic.store.states import DutyState

SHOWN = 50  # result rows printed before pointing at `civic results export`


def run(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Model directory holding civic.yaml.")],
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="Dataset file (default: the one civic.yaml names).")] = None,
    citizens: Annotated[Optional[int], typer.Option(
        "--citizens", "-n", min=1, help="Local citizens to start (default: one per core, and "
                                        "at least the model's replication).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the results to this file (.csv or .jsonl).")] = None,
    again: Annotated[bool, typer.Option(
        "--again", help="Compute the dataset afresh even if an earlier run of the same model "
                        "and file exists (by default that run is resumed).")] = False,
    web: Annotated[Optional[str], typer.Option(
        "--web", metavar="HOST:PORT", help="Show the dashboard here while the job runs (e.g. "
                                           "127.0.0.1:24844).")] = None,
) -> None:
    """Add the model, import its dataset, compute it with local citizens, print the results.

    Run again with the same model and file, it resumes (or just shows) what the earlier run did.
    Exits with 6 when some duties end without a verified result (failed, inconclusive, or
    cancelled by an operator); while an operator pauses the dataset or its model, it waits.
    """
    c: Context = ctx.obj
    if output is not None:  # checked before any computing, not after it
        folder = output.parent
        if not folder.is_dir():
            raise UsageError(f"-o {output}: the directory {folder} does not exist")
        if not os.access(folder, os.W_OK) or output.is_dir():
            raise UsageError(f"-o {output}: cannot write there")
    dashboard = None
    if web:
        from civic.web import app as web_app  # aiohttp loads only when asked for

        dashboard = web_app.beside(*web_app.parse_address(web), announce=c.note)
    url = c.database_url()
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=c.err, transient=True, disable=not c.err.is_terminal) as bar:
        task = bar.add_task("computing duties", total=None)

        def on_progress(p: dict[str, int]) -> None:
            bar.update(task, total=p["total"], completed=p["total"] - p[DutyState.PENDING])

        report = run_job(url, c.settings, directory, dataset=dataset, citizens=citizens,
                         again=again, on_progress=on_progress, on_event=c.note,
                         beside=dashboard)
    p = report.progress
    c.note(f"{p[DutyState.DONE]} of {p['total']} duties verified"
           + "".join(f", {p[state]} {state}" for state in (DutyState.FAILED,
                                                             DutyState.INCONCLUSIVE,
                                                             DutyState.CANCELLED) if p[state]))
    if output is not None:
        fmt = "jsonl" if output.suffix in (".jsonl", ".ndjson") else "csv"
        with open(output, "w", newline="") as f:
            rows = catalog.export_results(url, report.dataset.id, fmt, f)
        c.note(f"wrote {rows} rows to {output}")
    else:
        _print_results(c, url, report.dataset.id)
    if not report.complete:
        for duty in report.unfinished:
            tries = f" after {duty.failures} failure(s)" if duty.failures else ""
            c.note(f"duty {duty.id} {duty.state}{tries}: {duty.error}")
            if duty.stderr_tail:
                c.note("  " + duty.stderr_tail.strip().replace("\n", "\n  "))
        raise RunIncomplete(f"{p['total'] - p[DutyState.DONE]} duties have no verified result")


def _print_results(c: Context, url: str, dataset_id: int) -> None:
    table: Table | None = None
    for count, row in enumerate(catalog.result_rows(url, dataset_id), 1):
        if table is None:
            table = Table(*row.keys(), title="verified results")
        if count > SHOWN:
            table.caption = (f"first {SHOWN} rows; all of them: civic results export "
                             f"--dataset {dataset_id} MODEL")
            break
        table.add_row(*(str(v) for v in row.values()))
    if table is not None:
        c.out.print(table)
