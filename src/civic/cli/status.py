"""``civic status``: duties by state per dataset (and what waiting duties wait for), and every
citizen seen."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.table import Table

from civic.cli.context import Context
from civic.store import catalog
from civic.store.states import FINISHED, SHOWN


def status(ctx: typer.Context,
           json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
           ) -> None:
    """Show progress per model and dataset, and citizens with their last contact."""
    c: Context = ctx.obj
    data = catalog.status(c.database_url())
    if json:
        c.print_json(data)
        return
    if not data["datasets"]:
        c.out.print("no datasets yet")
    else:
        table = Table("model", "dataset", "duties", *SHOWN, "progress", title="duties")
        for d in data["datasets"]:
            finished = sum(d[state] for state in FINISHED)
            share = f"{100 * finished / d['duties']:.0f}%" if d["duties"] else "-"
            table.add_row(f"{d['model']} v{d['model_version']}", str(d["id"]),
                          *(str(d[k]) for k in ("duties", *SHOWN)), share)
        c.out.print(table)
        for d in data["datasets"]:
            for w in d["waiting"]:
                c.out.print(f"dataset {d['id']}: {w['duties']} duties wait: {w['reason']}",
                            highlight=False)
    if not data["citizens"]:
        c.out.print("no citizens seen yet")
        return
    table = Table("citizen", "id", "volunteer", "connected", "last seen", "leased", "valid",
                  "invalid", "errors", "resting", title="citizens")
    now = datetime.now(timezone.utc)
    for r in data["citizens"]:
        ago = int((now - r["last_seen_at"]).total_seconds())
        rest = r["cooldown_until"]
        table.add_row(r["name"], str(r["id"])[:8], r["volunteer"],
                      "yes" if r["connected"] else "no", f"{ago}s ago",
                      *(str(r[k]) for k in ("leased", "valid_count", "invalid_count",
                                            "error_count")),
                      f"{int((rest - now).total_seconds())}s more" if rest else "-")
    c.out.print(table)
