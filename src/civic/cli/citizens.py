"""``civic citizen``: donate this machine — citizens as containers, or as local processes."""

from __future__ import annotations

import logging
import signal
import socket
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from civic.citizen import agent
from civic.citizen.runtimes import Joining, ProcessRuntime
from civic.cli.context import Context
from civic.deploy import engine, images
from civic.deploy.citizens import DockerRuntime, Limits
from civic.errors import CivicError, NotFound, Refused, UsageError
from civic.protocol import parse_address
from civic.store import people

app = typer.Typer(no_args_is_help=True, help="Run citizens: workers that compute duties.")

ADDRESS = Annotated[str, typer.Argument(metavar="HOST:PORT", help="The CIVIC server.")]
PREFETCH = Annotated[int, typer.Option("--prefetch", min=1, max=32,
                                       help="Duties each citizen leases at a time.")]
NAMES = Annotated[Optional[list[str]], typer.Argument(help="Citizen names (see citizen list).")]
ALL = Annotated[bool, typer.Option("--all", help="Every citizen of this instance.")]
JSON = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TLS = Annotated[bool, typer.Option("--tls", help="Connect with TLS (checked against the "
                                                "system's roots, or --ca).")]
CA = Annotated[Optional[Path], typer.Option("--ca", help="CA file that signed the server's "
                                            "certificate (implies --tls).")]
TOKEN_FILE = Annotated[Optional[Path], typer.Option(
    "--token-file", help="File holding the join token (default: $CIVIC_TOKEN; never on the "
                         "command line, where ps would show it).")]


@app.command("run")
def run(
    ctx: typer.Context,
    address: ADDRESS,
    name: Annotated[Optional[str], typer.Option("--name", help="Name shown on the server "
                                                "(default: this host's name).")] = None,
    prefetch: PREFETCH = 1,
    token_file: TOKEN_FILE = None,
    tls: TLS = False,
    ca: CA = None,
) -> None:
    """Run one citizen in the foreground. Ctrl-C stops it."""
    c: Context = ctx.obj
    parse_address(address)
    name = name or socket.gethostname()
    logging.getLogger("civic").setLevel(min(logging.getLogger().level, logging.INFO))
    status = agent.run(agent.AgentOptions(address, c.settings.citizens_dir / name, name, prefetch,
                                          token=agent.read_token(token_file), tls=tls, ca=ca))
    raise typer.Exit(status)


@app.command("spawn")
def spawn(
    ctx: typer.Context,
    address: ADDRESS,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many citizens.")] = 1,
    runtime: Annotated[Optional[str], typer.Option(
        "--runtime", help="docker (one hardened container each; the default when an engine "
                          "answers) or process (local subprocesses, in the foreground).")] = None,
    prefix: Annotated[Optional[str], typer.Option("--prefix", help="Citizen name prefix "
                                                  "(default: this host's name).")] = None,
    prefetch: PREFETCH = 1,
    image: Annotated[str, typer.Option("--image", help="Citizen image (docker; built when "
                                       "the default is missing).")] = images.CITIZEN_IMAGE,
    base: Annotated[Optional[str], typer.Option("--base", help="Base image when the citizen "
                                                "image must be built (docker).")] = None,
    cpus: Annotated[float, typer.Option("--cpus", min=0.01, help="CPUs per citizen (docker)."
                                        )] = 1.0,
    memory: Annotated[str, typer.Option("--memory", help="Memory per citizen, e.g. 512m, 2g "
                                        "(docker).")] = "1g",
    pids: Annotated[int, typer.Option("--pids", min=16, help="Processes per citizen (docker)."
                                      )] = 256,
    network: Annotated[Optional[str], typer.Option(
        "--network", help="host, none or a network name (docker; default: bridge).")] = None,
    log_dir: Annotated[Optional[Path], typer.Option(
        "--log-dir", help="Write each citizen's log here (process).")] = None,
    token_file: TOKEN_FILE = None,
    tls: TLS = False,
    ca: CA = None,
    json: JSON = False,
) -> None:
    """Start COUNT citizens working for the server at HOST:PORT. Containers keep running (and
    restart) until `civic citizen stop`; process citizens run until Ctrl-C."""
    c: Context = ctx.obj
    parse_address(address)
    if runtime is None:
        runtime = "docker" if engine.available() else "process"
        if runtime == "process":
            c.note("no Docker engine answers: running citizens as local processes "
                   "(--runtime process)")
    if runtime not in ("docker", "process"):
        raise UsageError(f"--runtime must be docker or process, not {runtime!r}")
    prefix = prefix or socket.gethostname()
    if ca is not None and not ca.is_file():
        raise UsageError(f"{ca}: no such CA file")
    joining = Joining(address, prefetch, agent.read_token(token_file), tls, ca)
    if runtime == "process":
        _spawn_processes(c, joining, [f"{prefix}-{i}" for i in range(1, count + 1)], log_dir)
        return
    docker = DockerRuntime(engine.client(), c.settings.instance, image,
                           Limits(cpus=cpus, memory=memory, pids=pids), network)
    if image == images.CITIZEN_IMAGE and not engine.has_image(docker.engine, image):
        with c.err.status(f"building {image}…"):
            images.build_citizen(docker.engine, base=base)
    started = docker.spawn(joining, docker.free_names(prefix, count))
    if json:
        c.print_json([vars(s) for s in started])
        return
    table = Table("citizen", "container", "state", "image",
                  title=f"{len(started)} citizen container(s) working for {address}")
    for s in started:
        table.add_row(s.name, s.container, s.state, s.image)
    c.out.print(table)


def _spawn_processes(c: Context, joining: Joining, names: list[str], log_dir: Path | None
                     ) -> None:
    runner = ProcessRuntime(c.settings.citizens_dir, log_dir)
    spawned = runner.spawn(joining, names)
    table = Table("citizen", "pid", "home",
                  title=f"{len(names)} citizen(s) working for {joining.address}")
    for s in spawned:
        table.add_row(s.name, str(s.process.pid), str(s.home))
    c.err.print(table)
    c.err.print("[dim]Ctrl-C stops them all[/]")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
    stopped = False
    try:
        while any(s.running for s in spawned):
            time.sleep(0.5)
    except KeyboardInterrupt:
        c.note("stopping citizens…")
        stopped = True
    finally:
        runner.stop(spawned)
    codes = [s.process.returncode for s in spawned]
    for s, code in zip(spawned, codes):
        if code not in (0, -signal.SIGTERM):
            c.note(f"{s.name} exited with status {code}")
    if stopped:
        return
    if all(code == Refused.exit_code for code in codes):
        c.note("the server refused every citizen (see their messages above)")
        raise typer.Exit(Refused.exit_code)
    if any(code != 0 for code in codes):
        raise typer.Exit(1)


def _docker(c: Context) -> DockerRuntime:
    return DockerRuntime(engine.client(), c.settings.instance, images.CITIZEN_IMAGE)


@app.command("list")
def list_(ctx: typer.Context, json: JSON = False) -> None:
    """List this instance's citizen containers."""
    c: Context = ctx.obj
    citizens = _docker(c).list()
    c.listing(citizens, json=json, as_json=[vars(s) for s in citizens],
              empty="no citizen containers; start some with: civic citizen spawn HOST:PORT",
              columns=("citizen", "container", "state", "server", "image"),
              cells=lambda s: [s.name, s.container, s.state, s.server, s.image])


def _act(ctx: typer.Context, names: list[str] | None, everyone: bool, verb: str) -> None:
    c: Context = ctx.obj
    if not names and not everyone:
        raise UsageError("name the citizens, or pass --all")
    docker = _docker(c)
    chosen = docker.select(names or [], everyone)
    getattr(docker, verb)(chosen)
    done = {"stop": "stopped", "start": "started", "remove": "removed"}[verb]
    for container in chosen:
        c.out.print(f"{done} {container.name}")


@app.command("stop")
def stop(ctx: typer.Context, names: NAMES = None, all: ALL = False) -> None:
    """Stop citizen containers (they keep their identity and cache)."""
    _act(ctx, names, all, "stop")


@app.command("start")
def start(ctx: typer.Context, names: NAMES = None, all: ALL = False) -> None:
    """Start stopped citizen containers again."""
    _act(ctx, names, all, "start")


@app.command("remove")
def remove(ctx: typer.Context, names: NAMES = None, all: ALL = False) -> None:
    """Remove citizen containers with their volumes."""
    _act(ctx, names, all, "remove")


@app.command("logs")
def logs(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Citizen name.")],
         lines: Annotated[int, typer.Option("--lines", "-n", "--tail", min=1,
                                            help="Lines to show.")] = 100,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines "
                                              "until Ctrl-C.")] = False,
         log_dir: Annotated[Optional[Path], typer.Option(
             "--log-dir", help="Where process citizens write their logs (as given to `civic "
                               "citizen spawn --log-dir`; default: CIVIC_HOME/logs, where "
                               "`civic run` puts them).")] = None,
         ) -> None:
    """Show the last lines of the log of a citizen spawned on this machine: its container's,
    or a process citizen's log file; --follow prints new lines as they come."""
    c: Context = ctx.obj
    out = c.out.file
    path = (log_dir or c.settings.home / "logs") / f"{name}.log"
    try:
        docker = _docker(c)
        (container,) = docker.select([name], False)
    except (NotFound, CivicError) as exc:  # no such container, or no Docker here
        if not path.is_file():
            raise NotFound(f"no citizen container named {name!r} and no log file {path}"
                           + ("" if isinstance(exc, NotFound) else f" ({exc})")) from None
        return _follow_file(out, path, lines, follow)
    try:
        if not follow:
            out.write(docker.logs(container, lines))
            return
        for chunk in docker.follow(container, lines):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


def _follow_file(out: Any, path: Path, lines: int, follow: bool) -> None:
    """The last ``lines`` lines of a log file, then (``follow``) what is appended to it."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))  # enough for any tail asked of a log
        tail = f.read().decode("utf-8", "replace").splitlines(keepends=True)[-lines:]
        out.write("".join(tail))
        out.flush()
        try:
            while follow:
                chunk = f.read()
                if chunk:
                    out.write(chunk.decode("utf-8", "replace"))
                    out.flush()
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass


WHO = Annotated[str, typer.Argument(metavar="NAME|ID", help="The citizen: its name, or its id "
                                                            "when several share a name.")]
REASON = Annotated[Optional[str], typer.Option("--reason", help="Why: what the citizen is "
                                               "told, and what status shows.")]


def _blocked(c: Context, done: people.Blocked, json: bool) -> None:
    if json:
        c.print_json(done)
        return
    who = f"{done.kind} {done.name}"
    if done.blocked:
        more = (f"; {done.released} lease(s) it held went to other citizens" if done.released
                else "")
        c.note(f"{who} blocked" + (" (already; reason updated)" if not done.changed else "")
               + f": refused from now on, dropped at once if connected{more}")
    else:
        c.note(f"{who} unblocked" if done.changed else f"{who} was not blocked")


@app.command("block")
def block(ctx: typer.Context, who: WHO, reason: REASON = None, json: JSON = False) -> None:
    """Block a citizen: it leases nothing from the moment this commits, the server holding its
    connection drops it at once telling it why, and it is refused when it comes back; what it
    held goes to other citizens, charged to no duty."""
    c: Context = ctx.obj
    _blocked(c, people.block_citizen(c.database_url(), who, reason), json)


@app.command("unblock")
def unblock(ctx: typer.Context, who: WHO, json: JSON = False) -> None:
    """Let a blocked citizen work again (a stopped one needs starting again)."""
    c: Context = ctx.obj
    _blocked(c, people.unblock_citizen(c.database_url(), who), json)
