"""``civic server``: run the CIVIC server."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from civic.cli.context import Context
from civic.protocol import DEFAULT_PORT
from civic.server.runner import serve
from civic.server.service import ServerOptions

app = typer.Typer(no_args_is_help=True, help="Run the server citizens connect to.")


@app.command("start")
def start(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="TCP port to listen on.")] = DEFAULT_PORT,
    grace: Annotated[float, typer.Option(
        "--grace", min=0, help="Seconds to wait for results in flight when stopping.")] = 30.0,
    database_url: Annotated[Optional[str], typer.Option(
        "--database-url", help="PostgreSQL to use (same as civic --database-url).")] = None,
) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM (then it drains and exits 0)."""
    c: Context = ctx.obj
    url = c.database_url(database_url)
    logging.getLogger("civic").setLevel(min(logging.getLogger().level, logging.INFO))
    serve(url, ServerOptions(host=host, port=port, grace=grace))
