"""Entry point of the ``civic`` command and its exit-code table.

Exit codes: 0 success · 1 error · 2 bad input (arguments, files) · 3 not found ·
4 database unreachable · 5 address in use · 6 run finished with duties unresolved ·
7 refused by the server · 130 interrupted.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from civic import __version__
from civic.cli import (citizens, datasets, duties, images, models, operators, results, retry,
                       run, server, status, volunteers)
from civic.cli.context import Context
from civic.config import load_settings
from civic.errors import CivicError

app = typer.Typer(
    name="civic", no_args_is_help=True, pretty_exceptions_enable=False,
    help="CIVIC: run your own volunteer-computing cluster. A model's code runs on volunteer "
         "citizens, duty by duty, and every result is verified and stored in PostgreSQL.")
app.add_typer(server.app, name="server")
app.add_typer(models.app, name="model")
app.add_typer(datasets.app, name="dataset")
app.add_typer(citizens.app, name="citizen")
app.add_typer(volunteers.app, name="volunteer")
app.add_typer(operators.app, name="operator")
app.add_typer(duties.app, name="duty")
app.add_typer(results.app, name="results")
app.add_typer(images.app, name="image")
duties.app.command("retry")(retry.retry)
app.add_typer(duties.app, name="duties", hidden=True)  # `civic duties retry` reads well too
app.command("status")(status.status)
app.command("run")(run.run)

_debug = False


def _version(value: bool) -> None:
    if value:
        print(f"civic {__version__}")
        raise typer.Exit()


@app.callback()
def setup(
    ctx: typer.Context,
    database_url: Annotated[Optional[str], typer.Option(
        "--database-url", envvar="CIVIC_DATABASE_URL", show_envvar=True,
        help="PostgreSQL to use instead of the embedded one.")] = None,
    home: Annotated[Optional[Path], typer.Option(
        "--home", envvar="CIVIC_HOME", show_envvar=True,
        help="Directory for all local state (config, embedded database, citizens).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Options shared by every command."""
    global _debug
    _debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else
                        logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # The operator console runs commands in-process and passes the consoles they print to.
    consoles = ctx.obj if isinstance(ctx.obj, dict) else {}
    ctx.obj = Context(load_settings(home=home, database_url=database_url, debug=debug),
                      **consoles)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit status; CivicErrors become one-line messages."""
    # SIGTERM unwinds like Ctrl-C, so citizens, servers and the embedded database stop cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app(args=argv, prog_name="civic")  # typer exits through SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except CivicError as exc:
        if _debug:
            raise
        print(f"civic: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
