"""``civic image``: build the citizen and server images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from civic.cli.context import Context
from civic.deploy import engine, images

app = typer.Typer(no_args_is_help=True, help="Build CIVIC's Docker images.")


@app.command("build")
def build(
    ctx: typer.Context,
    base: Annotated[Optional[str], typer.Option(
        "--base", help="Base image with python3 (default: python:3.13-alpine for citizens, "
                       "python:3.13-slim for the server).")] = None,
    slim: Annotated[bool, typer.Option(
        "--slim", help="No C toolchain in the citizen image (only models that need no "
                       "build step will run).")] = False,
    wheelhouse: Annotated[Optional[Path], typer.Option(
        "--wheelhouse", help="Wheels for an offline server build (pip wheel ... -w DIR).")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="citizen or server.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the build output.")
                       ] = False,
) -> None:
    """Build civic-citizen:VERSION and civic-server:VERSION from the packaged Dockerfiles."""
    c: Context = ctx.obj
    docker = engine.client()
    show = (lambda line: c.err.print(line, markup=False, highlight=False)) if verbose else None
    if only in (None, "citizen"):
        with c.err.status(f"building {images.CITIZEN_IMAGE}…"):
            c.out.print(f"built {images.build_citizen(docker, base=base, toolchain=not slim, on_line=show)}")
    if only in (None, "server"):
        with c.err.status(f"building {images.SERVER_IMAGE}…"):
            c.out.print(f"built {images.build_server(docker, base=base, wheelhouse=wheelhouse, on_line=show)}")
