"""The Docker engine, reached through the docker SDK; its errors become DockerError.

Everything CIVIC creates in Docker carries the labels below, so it can be found (and removed)
again by label and never mistaken for someone else's containers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from civic import __version__
from civic.errors import DockerError

LABEL_INSTANCE = "civic.instance"
LABEL_ROLE = "civic.role"
LABEL_SERVER = "civic.server"
LABEL_NAME = "civic.name"
LABEL_VERSION = "civic.version"


def labels(instance: str, role: str, **extra: str) -> dict[str, str]:
    return {LABEL_INSTANCE: instance, LABEL_ROLE: role, LABEL_VERSION: __version__, **extra}


def selector(instance: str, role: str | None = None) -> dict[str, list[str]]:
    """A docker ``filters`` value matching one instance's objects (of one role)."""
    wanted = [f"{LABEL_INSTANCE}={instance}"]
    if role:
        wanted.append(f"{LABEL_ROLE}={role}")
    return {"label": wanted}


def client() -> Any:
    """A connected docker client, or a DockerError saying what to do."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise DockerError(f"the docker SDK is not installed: {exc}") from None
    try:
        engine = docker.from_env(timeout=120)
        engine.ping()
        return engine
    except DockerException as exc:
        text = str(exc)
        if "Permission denied" in text:
            raise DockerError("permission denied on the Docker socket: add your user to the "
                              "'docker' group (then log in again) or run as root") from None
        raise DockerError("no Docker engine answers: install and start Docker (or set "
                          f"DOCKER_HOST); the engine said: {text}") from None


def available() -> bool:
    """Whether a Docker engine answers (for choosing a default runtime)."""
    try:
        client()
        return True
    except DockerError:
        return False


@contextlib.contextmanager
def errors(doing: str) -> Iterator[None]:
    """Turn docker SDK errors raised while ``doing`` something into DockerError."""
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound

    try:
        yield
    except ImageNotFound as exc:
        raise DockerError(f"{doing}: image not found ({exc.explanation}); build it with "
                          "`civic image build` or pass another with --image") from None
    except (NotFound, APIError) as exc:
        raise DockerError(f"{doing}: {exc.explanation or exc}") from None
    except DockerException as exc:
        raise DockerError(f"{doing}: {exc}") from None


def find(engine: Any, kind: str, name: str) -> Any | None:
    """The container, volume or network of that name, or None."""
    from docker.errors import NotFound

    collection = {"container": engine.containers, "volume": engine.volumes,
                  "network": engine.networks}[kind]
    try:
        return collection.get(name)
    except NotFound:
        return None


def is_container(thing: Any) -> bool:
    from docker.models.containers import Container

    return isinstance(thing, Container)


def discard(thing: Any) -> None:
    """Remove a container (even running), volume or network."""
    if is_container(thing):
        thing.remove(force=True)
    else:
        thing.remove()


def has_image(engine: Any, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        engine.images.get(tag)
        return True
    except ImageNotFound:
        return False


def ensure_image(engine: Any, tag: str, hint: str) -> None:
    """Pull ``tag`` unless it is already here; ``hint`` says what to do when that fails."""
    from docker.errors import DockerException

    if has_image(engine, tag):
        return
    try:
        engine.images.pull(tag)
    except DockerException as exc:
        reason = getattr(exc, "explanation", None) or exc
        raise DockerError(f"image {tag} is not here and cannot be pulled ({reason}); "
                          f"{hint}") from None


def instance_of(thing: Any) -> str | None:
    """The CIVIC instance a container, volume or network belongs to (None: not CIVIC's)."""
    attrs = thing.attrs
    found = attrs.get("Labels") or attrs.get("Config", {}).get("Labels") or {}
    return found.get(LABEL_INSTANCE)
