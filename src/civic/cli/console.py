"""``civic server console``: operate a project from one screen (civic.console does the screen)."""

from __future__ import annotations

import io
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from civic.cli import status
from civic.cli.context import Context
from civic.errors import UsageError
from civic.store import monitor, redact

HISTORY = "console_history"  # under the home: the command line's history, across sessions


def console(
    ctx: typer.Context,
    database_url: Annotated[Optional[str], typer.Option(
        "--database-url", help="PostgreSQL to use (same as civic --database-url).")] = None,
    refresh: Annotated[float, typer.Option(
        "--refresh", min=0.5, help="Seconds between two status refreshes.")] = 2.0,
) -> None:
    """A full-screen console: the live status on top, a command line below (history, Tab
    completion, help) running the civic commands and their short forms (pause 3, duty 12,
    logs…). It finds the database as every command does: --database-url, CIVIC_DATABASE_URL,
    the installed server's config, else the embedded one."""
    c: Context = ctx.obj
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("civic server console needs a terminal; without one, watch with "
                         "`civic status --watch` or run the commands themselves "
                         "(civic status --json, civic dataset list…)")
    url = c.database_url(database_url)
    from civic.cli.main import app  # here: main imports the module that registers this command
    from civic.console.app import ConsoleApp  # prompt_toolkit only for the console

    home = c.settings.home
    where = (redact(url) if database_url or c.settings.database_url
             else f"the embedded PostgreSQL of {home}")
    ConsoleApp(typer.main.get_command(app), ["--database-url", url, "--home", str(home)], url,
               where, lambda width: status_screen(url, width), home / HISTORY, refresh).run()


def status_screen(url: str, width: int) -> str:
    """What `civic status` shows, as text with ANSI colours, for the console's top pane."""
    buffer = io.StringIO()
    screen = Console(file=buffer, width=width, color_system="standard", soft_wrap=False)
    screen.print(status.render_status(monitor.status(url)))
    return buffer.getvalue()
