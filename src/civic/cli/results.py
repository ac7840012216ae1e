"""``civic results``: export canonical results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from civic.cli.context import Context
from civic.errors import UsageError
from civic.store import catalog

app = typer.Typer(no_args_is_help=True, help="Get verified results out.")

EXPORT_FORMATS = ("csv", "jsonl")


@app.command("export")
def export(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model whose results to export.")],
    format: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write to this file instead of stdout.")] = None,
    dataset: Annotated[Optional[int], typer.Option(
        "--dataset", help="Dataset id (default: the model's latest).")] = None,
) -> None:
    """Export canonical results: one row per input record (with its duty id and record index)
    when the model returns a JSON list, else one row per duty."""
    c: Context = ctx.obj
    if format not in EXPORT_FORMATS:
        raise UsageError(f"--format must be csv or jsonl, not {format!r}")
    url = c.database_url()
    dataset_id = catalog.resolve_dataset(url, model, dataset)
    if output is None:
        catalog.export_results(url, dataset_id, format, sys.stdout)
        return
    partial = output.with_name(output.name + ".part")  # never leave a half-written file behind
    try:
        with open(partial, "w", newline="") as f:
            count = catalog.export_results(url, dataset_id, format, f)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    c.note(f"wrote {count} rows to {output}")
