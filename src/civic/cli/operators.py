"""``civic operator``: the people who may act from the web dashboard (pause, retry, block...).

Each operator has a token of their own, shown once and kept only hashed; they log in at the
dashboard's /login with their name and token, or send ``Authorization: Bearer NAME:TOKEN``
from scripts. Pages are readable without a login.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Annotated

import typer

from civic.cli.citizens import JSON
from civic.cli.context import Context
from civic.cli.volunteers import _ago
from civic.errors import NeedsConfirmation
from civic.store import operators

app = typer.Typer(no_args_is_help=True, help="Add, list and remove the operators who may act "
                                             "from the web dashboard.")

NAME = Annotated[str, typer.Argument(help="The operator's name (a-z 0-9 _ . -).")]


@app.command("add")
def add(ctx: typer.Context, name: NAME, json: JSON = False) -> None:
    """Add an operator and print their token, once (only a hash is kept). They log in at the
    dashboard's /login with NAME and the token."""
    c: Context = ctx.obj
    token = operators.add_operator(c.database_url(), name)
    if json:
        c.print_json({"name": name, "token": token})
        return
    c.note(f"operator {name} added; their token (it is not shown again) is on stdout. Log in "
           f"at the dashboard's /login as {name} with it, or send "
           f"'Authorization: Bearer {name}:TOKEN' from scripts.")
    c.out.file.write(token + "\n")


@app.command("list")
def list_(ctx: typer.Context, json: JSON = False) -> None:
    """List the operators: since when, their logins open now, their last use of one."""
    c: Context = ctx.obj
    rows = operators.list_operators(c.database_url())
    now = datetime.now(timezone.utc)
    c.listing(rows, json=json, empty="no operators: add one with civic operator add NAME",
              columns=("operator", "created", "sessions", "last seen"),
              cells=lambda r: [r.name, _ago(now, r.created_at), str(r.sessions),
                               _ago(now, r.last_seen_at) if r.last_seen_at else "-"])


@app.command("remove")
def remove(ctx: typer.Context, name: NAME,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
           ) -> None:
    """Remove an operator: their token logs in no more, and their open logins end now."""
    c: Context = ctx.obj
    url = c.database_url()
    try:
        closed = operators.remove_operator(url, name, yes=yes)
    except NeedsConfirmation as exc:
        if not sys.stdin.isatty():
            raise
        if not typer.confirm(f"{exc.question}. Remove them?", default=False, err=True):
            c.note("nothing removed")
            raise typer.Exit(1) from None
        closed = operators.remove_operator(url, name, yes=True)
    c.note(f"operator {name} removed"
           + (f"; {closed} open login(s) closed" if closed else ""))
