"""``civic dataset``: import, list, pause, resume, cancel and remove datasets."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from civic.cli.context import Context
from civic.datasets import FORMATS, STDIN, display_name
from civic.errors import NeedsConfirmation, UsageError
from civic.store import catalog, control
from civic.store.states import SHOWN

app = typer.Typer(no_args_is_help=True, help="Import records for a model and cut them into "
                                              "duties; pause, resume, cancel or remove them.")

JSON = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
YES = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask: delete results too.")]
ID = Annotated[int, typer.Argument(help="Dataset id (see civic dataset list).")]


@app.command("import")
def import_(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model the records are for.")],
    file: Annotated[Path, typer.Argument(help="CSV, JSON (a list), JSON Lines or plain lines; "
                                              "- reads standard input.")],
    format: Annotated[Optional[str], typer.Option(
        "--format", help=f"One of {', '.join(FORMATS)}; default: from the manifest or the "
                         "file's extension.")] = None,
    records_per_duty: Annotated[Optional[int], typer.Option(
        "--records-per-duty", min=1, help="Records per duty (default: the manifest's).")] = None,
    replication: Annotated[Optional[int], typer.Option(
        "--replication", min=1, help="Replicas per duty (default: the manifest's).")] = None,
    quorum: Annotated[Optional[int], typer.Option(
        "--quorum", min=1, help="Agreeing results needed (default: the manifest's).")] = None,
    max_replicas: Annotated[Optional[int], typer.Option(
        "--max-replicas", min=1, help="Most replicas a duty may get when results disagree "
                                      "(default: the manifest's).")] = None,
    again: Annotated[bool, typer.Option(
        "--again", help="Import it even if a dataset of this model has the same bytes.")] = False,
    distinct: Annotated[Optional[str], typer.Option(
        "--distinct", help="Results that count toward a quorum come from distinct volunteer, "
                           "host or citizen (default: the manifest's, else host).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Stream FILE into duties for MODEL, all or nothing: a bad record stores nothing. A file
    identical to one already imported for MODEL is refused unless --again."""
    c: Context = ctx.obj
    if format is not None and format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if file != STDIN and (not file.exists() or file.is_dir()):  # pipes (/dev/stdin) are fine
        raise UsageError(f"{file}: no such file")
    options = dict(fmt=format, records_per_duty=records_per_duty, replication=replication,
                   quorum=quorum, max_replicas=max_replicas, again=again,
                   distinct=distinct)
    url = c.database_url()
    if c.err.is_terminal and not json and file.is_file():
        columns = (*Progress.get_default_columns()[:2], BarColumn(), DownloadColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=c.err, transient=True) as bar:
            task = bar.add_task(f"importing {file.name}", total=file.stat().st_size)
            imported = catalog.import_dataset(url, model, file,
                                              on_bytes=lambda n: bar.update(task, completed=n),
                                              **options)  # type: ignore[arg-type]
    else:
        imported = catalog.import_dataset(url, model, file, **options)  # type: ignore[arg-type]
    if json:
        c.print_json(imported.__dict__)
    else:
        c.out.print(f"dataset {imported.id}: {imported.records} records from "
                    f"{display_name(file) if file == STDIN else file.name} "
                    f"({imported.format}) → {imported.duties} duties for {imported.model} "
                    f"v{imported.model_version}, replication {imported.replication}, "
                    f"quorum {imported.quorum}", highlight=False)


@app.command("list")
def list_(ctx: typer.Context,
          model: Annotated[Optional[str], typer.Argument(help="Only this model's.")] = None,
          json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
          ) -> None:
    """List datasets with their duties by state."""
    c: Context = ctx.obj
    rows = catalog.list_datasets(c.database_url(), model)
    # Done and pending always; failed, inconclusive and cancelled only when some dataset has any.
    counts = ("records", "duties", *(state for state in SHOWN if state in ("done", "pending")
                                     or any(r[state] for r in rows)))
    c.listing(rows, json=json,
              empty="no datasets yet; import one with: civic dataset import MODEL FILE",
              columns=("id", "model", "source", "state", *counts),
              cells=lambda r: [str(r["id"]), f"{r['model']} v{r['model_version']}", r["source"],
                               r["state"], *(str(r[k]) for k in counts)])


def report(c: Context, result: object, message: str, json: bool) -> None:
    """A control operation's outcome: its dataclass as JSON, or its message."""
    if json:
        c.print_json(result)
    else:
        c.out.print(message, highlight=False)


def removing(c: Context, remove: Callable[[bool], control.Removal], yes: bool,
             json: bool) -> None:
    """Remove, asking first on a terminal when results (or work under way) would go too;
    without a terminal, NeedsConfirmation says what would go and to pass --yes."""
    try:
        removal = remove(yes)
    except NeedsConfirmation as exc:
        if not sys.stdin.isatty():
            raise
        if not typer.confirm(f"{exc.question}. Remove it?", default=False, err=True):
            c.note("nothing removed")
            raise typer.Exit(1) from None
        removal = remove(True)
    report(c, removal, removal.message, json)


@app.command("pause")
def pause(ctx: typer.Context, dataset: ID, json: JSON = False) -> None:
    """Stop leasing DATASET's duties, on every server of the database.

    Replicas already out finish and their results count."""
    c: Context = ctx.obj
    change = control.pause_dataset(c.database_url(), dataset)
    report(c, change, change.message, json)


@app.command("resume")
def resume(ctx: typer.Context, dataset: ID, json: JSON = False) -> None:
    """Lease DATASET's duties again; waiting citizens get them at once."""
    c: Context = ctx.obj
    change = control.resume_dataset(c.database_url(), dataset)
    report(c, change, change.message, json)


@app.command("cancel")
def cancel(ctx: typer.Context, dataset: ID, json: JSON = False) -> None:
    """Give up DATASET's pending duties: they become cancelled.

    Done duties keep their results; results of replicas still out are kept as late, counted
    for nobody. `civic duties retry --dataset ID --state cancelled` computes them after all."""
    c: Context = ctx.obj
    change = control.cancel_dataset(c.database_url(), dataset)
    report(c, change, change.message, json)


@app.command("remove")
def remove(ctx: typer.Context, dataset: ID, yes: YES = False, json: JSON = False) -> None:
    """Delete DATASET with its duties and replicas.

    If it holds results, or citizens compute it now, asks first (on a terminal) or needs
    --yes."""
    c: Context = ctx.obj
    url = c.database_url()
    removing(c, lambda sure: control.remove_dataset(url, dataset, yes=sure), yes, json)
