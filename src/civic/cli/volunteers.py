"""``civic volunteer``: people or groups that donate machines, each with a join token of its own.

Results that count toward one quorum can be required to come from distinct volunteers (a
model's ``distinct: volunteer``), so one person running many citizens can never verify a
result alone. Citizens that join with the server-wide join token belong to the volunteer 'lab'.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import Annotated

import typer

from civic.cli.context import Context
from civic.cli.citizens import JSON, REASON, _blocked
from civic.store import catalog, people

app = typer.Typer(no_args_is_help=True, help="Add, list and remove volunteers and their join "
                                             "tokens.")

NAME = Annotated[str, typer.Argument(help="The volunteer's name (a-z 0-9 _ . -).")]


@app.command("add")
def add(ctx: typer.Context, name: NAME) -> None:
    """Add a volunteer and print its join token, once (only a hash is kept). The volunteer's
    citizens take it from CIVIC_TOKEN or --token-file."""
    c: Context = ctx.obj
    token = catalog.add_volunteer(c.database_url(), name)
    c.note(f"volunteer {name} added; give them this join token (it is not shown again):")
    c.out.file.write(token + "\n")


@app.command("list")
def list_(ctx: typer.Context,
          json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
          ) -> None:
    """List volunteers: their citizens, those connected now, their results, removed or
    blocked."""
    c: Context = ctx.obj
    url = c.database_url()
    rows = catalog.list_volunteers(url)
    blocked = people.blocked_volunteers(url)
    now = datetime.now(timezone.utc)
    c.listing(rows, json=json, empty="no volunteers",
              as_json=[{**asdict(r), "blocked": r.name in blocked,
                        "blocked_at": blocked.get(r.name, (None, None))[0],
                        "blocked_reason": blocked.get(r.name, (None, None))[1]} for r in rows],
              columns=("volunteer", "created", "citizens", "connected", "valid", "invalid",
                       "errors", "removed", "blocked"),
              cells=lambda r: [r.name, _ago(now, r.created_at),
                               *map(str, (r.citizens, r.connected, r.valid, r.invalid,
                                          r.errors)),
                               _ago(now, r.removed_at) if r.removed else "-",
                               (blocked[r.name][1] or "yes") if r.name in blocked else "-"])


@app.command("remove")
def remove(ctx: typer.Context, name: NAME) -> None:
    """Remove a volunteer: its citizens are refused from now on (connected ones are dropped
    within seconds; what they leased goes to others, charged to no duty)."""
    c: Context = ctx.obj
    catalog.remove_volunteer(c.database_url(), name)
    c.note(f"volunteer {name} removed; its citizens are refused from now on")


def _ago(now: datetime, when: datetime) -> str:
    seconds = int((now - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@app.command("block")
def block(ctx: typer.Context, name: NAME, reason: REASON = None, json: JSON = False) -> None:
    """Block a volunteer: every citizen of theirs, on every server, leases nothing from the
    moment this commits, is dropped at once telling it why, and is refused when it comes back
    (new ones too); what they held goes to other citizens, charged to no duty."""
    c: Context = ctx.obj
    _blocked(c, people.block_volunteer(c.database_url(), name, reason), json)


@app.command("unblock")
def unblock(ctx: typer.Context, name: NAME, json: JSON = False) -> None:
    """Let a blocked volunteer's citizens work again."""
    c: Context = ctx.obj
    _blocked(c, people.unblock_volunteer(c.database_url(), name), json)
