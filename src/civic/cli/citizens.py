"""``civic citizen``: donate this machine — run one citizen, or spawn several."""

from __future__ import annotations

import logging
import signal
import socket
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from civic.citizen import agent
from civic.citizen.runtimes import ProcessRuntime
from civic.cli.context import Context
from civic.errors import UsageError
from civic.protocol import parse_address

app = typer.Typer(no_args_is_help=True, help="Run citizens: workers that compute duties.")

ADDRESS = Annotated[str, typer.Argument(metavar="HOST:PORT", help="The CIVIC server.")]


@app.command("run")
def run(
    ctx: typer.Context,
    address: ADDRESS,
    name: Annotated[Optional[str], typer.Option("--name", help="Name shown on the server "
                                                "(default: this host's name).")] = None,
    prefetch: Annotated[int, typer.Option("--prefetch", min=1, max=32,
                                          help="Duties to lease at a time.")] = 1,
) -> None:
    """Run one citizen in the foreground (what a citizen container runs). Ctrl-C stops it."""
    c: Context = ctx.obj
    parse_address(address)
    name = name or socket.gethostname()
    logging.getLogger("civic").setLevel(min(logging.getLogger().level, logging.INFO))
    status = agent.run(agent.AgentOptions(address, c.settings.citizens_dir / name, name, prefetch))
    raise typer.Exit(status)


@app.command("spawn")
def spawn(
    ctx: typer.Context,
    address: ADDRESS,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many citizens.")] = 1,
    runtime: Annotated[str, typer.Option("--runtime", help="Where citizens run: process "
                                         "(local subprocesses).")] = "process",
    prefix: Annotated[Optional[str], typer.Option("--prefix", help="Citizen name prefix "
                                                  "(default: this host's name).")] = None,
    log_dir: Annotated[Optional[Path], typer.Option("--log-dir", help="Write each citizen's "
                                                    "log here instead of the terminal.")] = None,
    prefetch: Annotated[int, typer.Option("--prefetch", min=1, max=32,
                                          help="Duties each citizen leases at a time.")] = 1,
) -> None:
    """Start COUNT citizens working for the server at HOST:PORT; Ctrl-C stops them all."""
    c: Context = ctx.obj
    parse_address(address)
    if runtime != "process":
        raise UsageError(f"--runtime {runtime!r} is not available yet; use --runtime process")
    names = [f"{prefix or socket.gethostname()}-{i}" for i in range(1, count + 1)]
    runner = ProcessRuntime()
    spawned = runner.spawn(address, names, c.settings.citizens_dir, log_dir, prefetch)
    table = Table("citizen", "pid", "home", title=f"{count} citizen(s) working for {address}")
    for s in spawned:
        table.add_row(s.name, str(s.process.pid), str(s.home))
    c.err.print(table)
    c.err.print("[dim]Ctrl-C stops them all[/]")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # explicit: a background job ignores SIGINT
    try:
        while any(s.running for s in spawned):
            time.sleep(0.5)
    except KeyboardInterrupt:
        c.note("stopping citizens…")
    finally:
        runner.stop(spawned)
    exited = [s for s in spawned if s.process.returncode not in (0, -signal.SIGTERM)]
    for s in exited:
        c.note(f"{s.name} exited with status {s.process.returncode}")
