"""``civic server``: run the server here, or install and manage it as Docker containers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from civic.cli.context import Context
from civic.deploy import engine, images
from civic.deploy.install import Installation, InstallOptions
from civic.errors import CivicError, UsageError
from civic.protocol import DEFAULT_PORT
from civic.server.runner import serve
from civic.server.service import ServerOptions
from civic.store import catalog
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
REUSE_PORT = Annotated[bool, typer.Option(
    "--reuse-port", help="Share the port with other civic servers on this host (SO_REUSEPORT): "
                         "the kernel spreads citizens over them.")]


def _installation(c: Context) -> Installation:
    return Installation(engine.client(), c.settings)


@app.command("run")
def run(ctx: typer.Context, host: HOST = "0.0.0.0", port: PORT = DEFAULT_PORT,
        grace: GRACE = 30.0, database_url: DATABASE = None, tls_cert: TLS_CERT = None,
        tls_key: TLS_KEY = None, reuse_port: REUSE_PORT = False) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM (then it drains and exits 0).
    This is what the server container runs. Any number of servers may share one database."""
    c: Context = ctx.obj
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    url = c.database_url(database_url)
    logging.getLogger("civic").setLevel(min(logging.getLogger().level, logging.INFO))
    serve(url, ServerOptions(host=host, port=port, grace=grace, tls_cert=tls_cert,
                             tls_key=tls_key, reuse_port=reuse_port))


@app.command("start")
def start(ctx: typer.Context, host: HOST = "0.0.0.0", port: PORT = DEFAULT_PORT,
          grace: GRACE = 30.0, database_url: DATABASE = None, tls_cert: TLS_CERT = None,
          tls_key: TLS_KEY = None, reuse_port: REUSE_PORT = False) -> None:
    """Start the installed server containers; without an installation, run the server here in
    the foreground (as `civic server run`)."""
    c: Context = ctx.obj
    if Installation.has_installation(c.settings):
        for name in _installation(c).start():
            c.out.print(f"started {name}")
        return
    run(ctx, host, port, grace, database_url, tls_cert, tls_key, reuse_port)


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
) -> None:
    """Install the server, PostgreSQL (and optionally Adminer) as Docker containers.
    Safe to run again: it reports what exists and repairs what is missing."""
    c: Context = ctx.obj
    if network not in ("bridge", "host"):
        raise UsageError(f"--network must be bridge or host, not {network!r}")
    options = InstallOptions(port=port, bind=bind, network=network, db_port=db_port,
                             server_image=server_image, postgres_image=postgres_image,
                             with_adminer=with_adminer)
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


@app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the installed containers (the server drains first); data is kept."""
    c: Context = ctx.obj
    for name in _installation(c).stop():
        c.out.print(f"stopped {name}")


@app.command("status")
def status(ctx: typer.Context, json: JSON = False) -> None:
    """Containers and their health, the database, citizens connected and duties by state."""
    c: Context = ctx.obj
    report = _installation(c).status()
    try:
        store = catalog.status(c.database_url())
        report["database"] = "reachable"
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
    c.out.print(f"database: {report['database']}", highlight=False)
    if "duties" in report:
        c.out.print(f"citizens connected: {report['citizens_connected']}; duties: "
                    + ", ".join(f"{v} {k}" for k, v in report["duties"].items()))


@app.command("logs")
def logs(ctx: typer.Context,
         service: Annotated[str, typer.Argument(help="server, postgres or adminer.")] = "server",
         tail: Annotated[int, typer.Option("--tail", min=1, help="Lines to show.")] = 100,
         ) -> None:
    """Show the last lines of an installed container's log."""
    c: Context = ctx.obj
    if service not in ("server", "postgres", "adminer"):
        raise UsageError("service must be server, postgres or adminer")
    c.out.file.write(_installation(c).logs(service, tail))


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
