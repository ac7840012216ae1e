"""``civic model``: add, list, show, pause, resume and remove models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from civic.cli.context import Context
from civic.cli.datasets import YES, removing, report
from civic.store import catalog, control

app = typer.Typer(no_args_is_help=True, help="Add and inspect models (your program + civic.yaml); "
                                              "pause, resume or remove them.")

JSON = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NAME = Annotated[str, typer.Argument(help="Model name (every version of it).")]


@app.command("add")
def add(ctx: typer.Context,
        directory: Annotated[Path, typer.Argument(help="Directory holding civic.yaml.")],
        json: JSON = False) -> None:
    """Validate DIR/civic.yaml, pack the model's files and store them as a new version."""
    c: Context = ctx.obj
    added = catalog.add_model(c.database_url(), directory)
    if json:
        c.print_json({"name": added.name, "version": added.version,
                      "bundle_sha256": added.bundle_sha256, "changed": added.changed})
    elif added.changed:
        c.out.print(f"added model [bold]{added.name}[/] version {added.version} "
                    f"(bundle {added.bundle_sha256[:12]})")
    else:
        c.out.print(f"model [bold]{added.name}[/] unchanged: still version {added.version}")


@app.command("list")
def list_(ctx: typer.Context, json: JSON = False) -> None:
    """List models with their latest version."""
    c: Context = ctx.obj
    rows = catalog.list_models(c.database_url())
    c.listing(rows, json=json, empty="no models yet; add one with: civic model add DIR",
              as_json=[{"name": r.name, "version": r.version, "bundle_sha256": r.bundle_sha256,
                        "datasets": r.datasets, "description": r.manifest.get("description", ""),
                        "created_at": r.created_at, "state": r.state} for r in rows],
              columns=("model", "version", "state", "datasets", "description", "added"),
              cells=lambda r: [r.name, str(r.version), r.state, str(r.datasets),
                               r.manifest.get("description", ""),
                               f"{r.created_at:%Y-%m-%d %H:%M}"])


@app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name.")],
         json: JSON = False) -> None:
    """Show a model's manifest, versions and datasets."""
    c: Context = ctx.obj
    model = catalog.show_model(c.database_url(), name)
    if json:
        c.print_json(model)
        return
    m = model["manifest"]
    c.out.print(f"[bold]{model['name']}[/] version {model['version']}"
                f"{' (' + m['version'] + ')' if m.get('version') else ''} — {m.get('description', '')}")
    for key in ("run", "build", "timeout", "replication", "quorum", "max_replicas",
                "max_attempts", "records_per_duty", "input_format", "dataset"):
        if m.get(key) is not None:
            c.out.print(f"  {key:<17} {m[key]}", highlight=False)
    c.out.print(f"  {'bundle':<17} {model['bundle_sha256']} ({model['bundle_size']} bytes)")
    c.out.print(f"  {'versions':<17} {', '.join(str(v['version']) for v in model['versions'])}")
    for d in model["datasets"]:
        c.out.print(f"  dataset {d['id']}: {d['records']} records in {d['duties']} duties, "
                    f"{d['done']} done", highlight=False)


@app.command("pause")
def pause(ctx: typer.Context, name: NAME, json: JSON = False) -> None:
    """Stop leasing the duties of every version of model NAME, on every server.

    Replicas already out finish and their results count."""
    c: Context = ctx.obj
    change = control.pause_model(c.database_url(), name)
    report(c, change, change.message, json)


@app.command("resume")
def resume(ctx: typer.Context, name: NAME, json: JSON = False) -> None:
    """Lease model NAME's duties again (datasets paused on their own stay paused)."""
    c: Context = ctx.obj
    change = control.resume_model(c.database_url(), name)
    report(c, change, change.message, json)


@app.command("remove")
def remove(ctx: typer.Context, name: NAME, yes: YES = False, json: JSON = False) -> None:
    """Delete ALL versions of model NAME with their datasets and results.

    Deletes every version, their datasets (duties, replicas, results) and the bundles no other
    model uses. If that deletes results or pending duties, or citizens compute it now, asks
    first (on a terminal) or needs --yes."""
    c: Context = ctx.obj
    url = c.database_url()
    removing(c, lambda sure: control.remove_model(url, name, yes=sure), yes, json)
