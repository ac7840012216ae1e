"""``civic server``: run the server here, or install and manage it as Docker containers."""

from __future__ import annotations

import json as json_
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from civic.cli.context import Context
from civic.deploy import engine, images
from civic.deploy.install import WEB_PORT, Installation, InstallOptions
from civic.errors import CivicError, UsageError
from civic.protocol import DEFAULT_PORT
from civic.server.runner import serve
from civic.server.service import ServerOptions
from civic.store import catalog, servers
from civic.store.states import DutyState

app = typer.Typer(no_args_is_help=True, help="Run the server citizens connect to, here or as "
                                             "Docker containers.")

HOST = Annotated[str, typer.Option("--host", help="Address to listen on.")]
PORT = Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port to listen on.")]
GRACE = Annotated[float, typer.Option(
    "--grace", min=0, help="Seconds to wait for results in flight when stopping.")]
DATABASE = Annotated[Optional[str], typer.Option(
    "--database-url", help="PostgreSQL to use (same as civic --database-url).")]
JSON = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
YES = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
TLS_CERT = Annotated[Optional[str], typer.Option(
    "--tls-cert", help="Serve TLS with this certificate (PEM); needs --tls-key.")]
TLS_KEY = Annotated[Optional[str], typer.Option("--tls-key", help="The certificate's key (PEM).")]
WEB = Annotated[Optional[str], typer.Option(
    "--web", metavar="HOST:PORT",
    help="Also serve the dashboard and /metrics here (e.g. 127.0.0.1:24844; read-only until "
         "an operator logs in).")]
REUSE_PORT = Annotated[bool, typer.Option(
    "--reuse-port", help="Share the port with other civic servers on this host (SO_REUSEPORT): "
                         "the kernel spreads citizens over them.")]


def _installation(c: Context) -> Installation:
    return Installation(engine.client(), c.settings)


@app.command("run")
def run(ctx: typer.Context, host: HOST = "0.0.0.0", port: PORT = DEFAULT_PORT,
        grace: GRACE = 30.0, database_url: DATABASE = None, tls_cert: TLS_CERT = None,
        tls_key: TLS_KEY = None, reuse_port: REUSE_PORT = False, web: WEB = None) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM (then it drains and exits 0).
    This is what the server container runs. Any number of servers may share one database."""
    c: Context = ctx.obj
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    url = c.database_url(database_url)
    dashboard = None
    if web:
        from civic.web import app as web_app  # aiohttp loads only when asked for

        dashboard = web_app.beside(*web_app.parse_address(web))
    logging.getLogger("civic").setLevel(min(logging.getLogger().level, logging.INFO))
    serve(url, ServerOptions(host=host, port=port, grace=grace, tls_cert=tls_cert,
                             tls_key=tls_key, reuse_port=reuse_port), dashboard)


@app.command("start")
def start(ctx: typer.Context, host: HOST = "0.0.0.0", port: PORT = DEFAULT_PORT,
          grace: GRACE = 30.0, database_url: DATABASE = None, tls_cert: TLS_CERT = None,
          tls_key: TLS_KEY = None, reuse_port: REUSE_PORT = False, web: WEB = None) -> None:
    """Start the installed server containers; without an installation, run the server here in
    the foreground (as `civic server run`)."""
    c: Context = ctx.obj
    if Installation.has_installation(c.settings):
        for name in _installation(c).start():
            c.out.print(f"started {name}")
        return
    run(ctx, host, port, grace, database_url, tls_cert, tls_key, reuse_port, web)


@app.command("token")
def token(ctx: typer.Context,
          rotate: Annotated[bool, typer.Option("--rotate", help="Replace it: citizens that "
                                               "already joined keep working.")] = False) -> None:
    """Print the join token new citizens need (give it to volunteers as CIVIC_TOKEN)."""
    c: Context = ctx.obj
    c.out.file.write(catalog.join_token(c.database_url(), rotate) + "\n")


@app.command("install")
def install(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", min=1, max=65535,
                                      help="Port citizens connect to.")] = DEFAULT_PORT,
    bind: Annotated[str, typer.Option("--bind", help="Address the port is published on.")
                    ] = "0.0.0.0",
    network: Annotated[str, typer.Option(
        "--network", help="bridge (a network of its own) or host (for hosts without a "
                          "bridge).")] = "bridge",
    db_port: Annotated[int, typer.Option("--db-port", min=1, max=65535,
                                         help="PostgreSQL port, on 127.0.0.1 only.")] = 24843,
    server_image: Annotated[str, typer.Option("--server-image", help="Server image (built "
                                              "when missing).")] = images.SERVER_IMAGE,
    postgres_image: Annotated[str, typer.Option("--postgres-image", help="PostgreSQL image "
                                                "(pulled when missing).")] = images.POSTGRES_IMAGE,
    base: Annotated[Optional[str], typer.Option("--base", help="Base image when the server "
                                                "image must be built.")] = None,
    wheelhouse: Annotated[Optional[Path], typer.Option(
        "--wheelhouse", help="Directory of wheels for an offline server image build.")] = None,
    with_adminer: Annotated[bool, typer.Option(
        "--with-adminer", help="Also run Adminer (database web UI) on 127.0.0.1:8080.")] = False,
    web: Annotated[str, typer.Option(
        "--web", metavar="HOST:PORT",
        help="Publish the dashboard and /metrics here (read-only until an operator logs in); "
             "'off' for none.")] = f"127.0.0.1:{WEB_PORT}",
) -> None:
    """Install the server, PostgreSQL (and optionally Adminer) as Docker containers.
    Safe to run again: it reports what exists and repairs what is missing."""
    c: Context = ctx.obj
    if network not in ("bridge", "host"):
        raise UsageError(f"--network must be bridge or host, not {network!r}")
    web_host, web_port = "127.0.0.1", 0
    if web.lower() not in ("off", "none", ""):
        from civic.web.app import parse_address  # aiohttp loads only when asked for

        web_host, web_port = parse_address(web)
        if web_port == 0:
            raise UsageError("--web wants a port (or 'off' for no dashboard), not 0")
    options = InstallOptions(port=port, bind=bind, network=network, db_port=db_port,
                             server_image=server_image, postgres_image=postgres_image,
                             with_adminer=with_adminer, web_host=web_host, web_port=web_port)
    installation = _installation(c)

    def build() -> None:
        images.build_server(installation.engine, base=base, wheelhouse=wheelhouse,
                            tag=server_image, on_line=lambda line: None)

    with c.err.status("installing…") as spinner:
        installation.install(options, step=lambda text: (c.note(text),
                                                         spinner.update(text + "…")),
                             build_server=build)
    where = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    c.out.print(f"CIVIC server installed: citizens connect to port {port} "
                f"(e.g. civic citizen spawn --count 4 {where}:{port})", highlight=False)
    if (dashboard := installation.dashboard()) is not None:
        c.out.print(f"dashboard: {dashboard} (Prometheus: {dashboard}metrics)", highlight=False)


@app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the installed containers (the server drains first); data is kept."""
    c: Context = ctx.obj
    for name in _installation(c).stop():
        c.out.print(f"stopped {name}")


@app.command("status")
def status(ctx: typer.Context, json: JSON = False) -> None:
    """Installed containers and their health, the database, the servers running on it (drained
    or not), citizens connected and duties by state."""
    c: Context = ctx.obj
    try:
        report = _installation(c).status()
    except CivicError as exc:  # no Docker here: the servers on the database still show
        report = {"instance": c.settings.instance, "installed": False, "containers": [],
                  "docker": f"unavailable: {exc}"}
    try:
        url = c.database_url()
        store = catalog.status(url)
        report["database"] = "reachable"
        report["servers"] = servers.list_servers(url)
        report["citizens_connected"] = sum(1 for r in store["citizens"] if r["connected"])
        report["duties"] = {state: sum(d[state] for d in store["datasets"])
                            for state in (DutyState.PENDING, DutyState.DONE, DutyState.FAILED,
                                          DutyState.INCONCLUSIVE)}
    except CivicError as exc:
        report["database"] = f"unreachable: {exc}"
    if json:
        c.print_json(report)
        return
    if not report["installed"]:
        c.out.print(f"no server installed for instance {report['instance']!r}")
    else:
        table = Table("container", "role", "state", "health", "image")
        for row in report["containers"]:
            table.add_row(row["name"], row["role"], row["state"], row["health"] or "-",
                          row["image"])
        c.out.print(table)
        if report.get("dashboard"):
            c.out.print(f"dashboard: {report['dashboard']} (Prometheus: "
                        f"{report['dashboard']}metrics)", highlight=False)
    c.out.print(f"database: {report['database']}", highlight=False)
    if "servers" in report:
        if report["servers"]:
            c.out.print(_servers_table(report["servers"]))
        else:
            c.out.print("servers running on the database: none")
    if "duties" in report:
        c.out.print(f"citizens connected: {report['citizens_connected']}; duties: "
                    + ", ".join(f"{v} {k}" for k, v in report["duties"].items()))


def _ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = int((datetime.now(timezone.utc) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(0, seconds)}s ago"


def _servers_table(rows: list[servers.ServerRow]) -> Table:
    table = Table("server", "address", "host", "pid", "started", "seen", "citizens", "leased",
                  "results", "state", title="servers on the database")
    for r in rows:
        state = ("stopped" if r.stopped_at else "lost" if not r.alive
                 else "draining" if r.draining else "leasing")
        table.add_row(r.id[:8], r.address, r.hostname, str(r.pid), _ago(r.started_at),
                      _ago(r.seen_at), str(r.connections), str(r.leased), str(r.results), state)
    return table


@app.command("servers")
def servers_(ctx: typer.Context, json: JSON = False,
             everyone: Annotated[bool, typer.Option(
                 "--all", help="Also servers stopped or lost (the last 100).")] = False) -> None:
    """List the servers running on this database: address, host, pid, when started and last
    seen, citizens connected, replicas leased and results since started, draining or not."""
    c: Context = ctx.obj
    rows = servers.list_servers(c.database_url(), everyone)
    if json:
        c.print_json(rows)
    elif not rows:
        c.note("no server is running on this database" + ("" if everyone else
                                                          " (--all shows stopped ones)"))
    else:
        c.out.print(_servers_table(rows))


SERVER_IDS = Annotated[Optional[list[str]], typer.Argument(
    metavar="[SERVER_ID]...", help="Servers by id or its first characters (civic server "
                                   "servers); none: every server, and those started later.")]
EVERY = Annotated[bool, typer.Option("--all", help="Every server, and those started later "
                                                   "(the default when no id is given).")]


def _drain(c: Context, ids: list[str] | None, everyone: bool, json: bool,
           draining: bool) -> None:
    if ids and everyone:
        raise UsageError("give server ids or --all, not both")
    done = servers.drain(c.database_url(), ids or (), draining)
    if json:
        c.print_json(done)
        return
    what = ("every server (and any started until `civic server undrain`)" if done.project
            and draining else "every server" if done.project
            else ", ".join(i[:8] for i in done.servers))
    if draining:
        c.note(f"drained {what}: no new leases from now on; results in flight are still "
               "accepted")
    else:
        c.note(f"undrained {what}: leasing again")


@app.command("drain")
def drain(ctx: typer.Context, ids: SERVER_IDS = None, everyone: EVERY = False,
          json: JSON = False) -> None:
    """Stop leasing: the servers lease nothing more from the moment this commits (they hear
    of it at once), finish what is in flight and say so in their log and in `civic server
    servers`. Without ids the whole project drains, servers started meanwhile included."""
    _drain(ctx.obj, ids, everyone, json, True)


@app.command("undrain")
def undrain(ctx: typer.Context, ids: SERVER_IDS = None, everyone: EVERY = False,
            json: JSON = False) -> None:
    """Resume leasing on drained servers (without ids: the whole project)."""
    _drain(ctx.obj, ids, everyone, json, False)


@app.command("logs")
def logs(ctx: typer.Context,
         lines: Annotated[int, typer.Option("--lines", "-n", min=1, max=100_000,
                                            help="Lines to show.")] = 50,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines "
                                              "until Ctrl-C.")] = False,
         server: Annotated[Optional[str], typer.Option(
             "--server", help="Only this server's lines (its id or first characters).")] = None,
         container: Annotated[Optional[str], typer.Option(
             "--container", help="Instead, the Docker log of the installed server, postgres "
                                 "or adminer container.")] = None,
         json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts (with "
                                            "--follow: one object a line).")] = False,
         ) -> None:
    """The servers' recent log lines (INFO and above, kept in the database for a week, from
    every server on it); --follow prints new ones as they come."""
    c: Context = ctx.obj
    if container is not None:
        if container not in ("server", "postgres", "adminer"):
            raise UsageError("--container must be server, postgres or adminer")
        c.out.file.write(_installation(c).logs(container, lines))
        return
    url = c.database_url()
    recent = servers.recent_events(url, lines, server)
    out = c.out.file
    if json and not follow:
        c.print_json(recent)
        return
    for event in recent:
        out.write(_event_line(event, json))
    out.flush()
    if not follow:
        return
    try:
        for event in servers.follow_events(url, recent[-1].id if recent else _last(url),
                                           server):
            out.write(_event_line(event, json))
            out.flush()
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) ends a follow: that is how it is used
        pass


def _last(url: str) -> int:
    newest = servers.recent_events(url, 1)
    return newest[-1].id if newest else 0


def _event_line(event: servers.Event, json: bool) -> str:
    if json:
        return json_.dumps({**vars(event), "at": event.at.isoformat()}) + "\n"
    where = (event.server_id or "-")[:8]
    return (f"{event.at.astimezone():%Y-%m-%d %H:%M:%S} {where} {event.level:<7} "
            f"{event.message}\n")


@app.command("uninstall")
def uninstall(ctx: typer.Context,
              purge: Annotated[bool, typer.Option("--purge", help="Also delete the data "
                                                  "volume: every model, duty and result.")
                               ] = False,
              yes: YES = False) -> None:
    """Remove the containers and network; the data volume stays unless --purge."""
    c: Context = ctx.obj
    installation = _installation(c)
    what = "containers, network AND ALL DATA" if purge else "containers and network"
    if not yes:
        if not c.err.is_terminal:
            raise UsageError("uninstall asks for confirmation: pass --yes to run it unattended")
        typer.confirm(f"Remove the CIVIC {what} of instance {installation.instance!r}?",
                      abort=True)
    installation.uninstall(purge, step=c.note)


from civic.cli.console import console  # noqa: E402 - registered last: one hunk, easy to merge

app.command("console")(console)
