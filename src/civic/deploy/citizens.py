"""The docker runtime: one hardened container per citizen, found again by its labels.

Each citizen runs the citizen image with a read-only root filesystem and a tmpfs /tmp, every
capability dropped but the four its agent needs to run models as another user (CHOWN, SETUID,
SETGID, KILL: the models themselves get none), no-new-privileges, CPU / memory / pids limits, a
restart policy, and a named volume of its own for its identity and bundle cache. Every container
spawned on one machine reports that machine's host key, and the memory it may give a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

from civic.citizen.agent import host_key
from civic.citizen.runtimes import Joining
from civic.deploy.engine import (LABEL_NAME, LABEL_SERVER, discard, ensure_image, errors,
                                 find, is_container, labels, selector)
from civic.errors import NotFound, UsageError
from civic.protocol import parse_address

ROLE = "citizen"
CA_IN_CONTAINER = "/etc/civic/ca.pem"
# The agent runs as root in its container with these capabilities only; its models run as
# MODEL_USER with none (setuid clears them; no-new-privileges keeps them from coming back).
AGENT_CAPABILITIES = ["CHOWN", "SETUID", "SETGID", "KILL"]
MODEL_USER = 10001
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class Limits:
    """What one citizen container may use."""

    cpus: float = 1.0
    memory: str = "1g"
    pids: int = 256
    tmpfs: str = "256m"

    @property
    def memory_bytes(self) -> int:
        """``memory`` ("512m", "2g", "1073741824") in bytes."""
        text = self.memory.strip().lower().removesuffix("b") or "0"
        unit = _UNITS.get(text[-1], 1)
        try:
            return int(float(text[:-1] if text[-1] in _UNITS else text) * unit)
        except ValueError:
            raise UsageError(f"--memory must look like 512m or 2g, not {self.memory!r}") from None


@dataclass(frozen=True)
class CitizenContainer:
    """One citizen as the engine reports it."""

    name: str
    container: str
    state: str
    server: str
    image: str
    volume: str


def _describe(container: Any) -> CitizenContainer:
    mounts = container.attrs.get("Mounts", [])
    return CitizenContainer(
        name=container.labels.get(LABEL_NAME, container.name), container=container.name,
        state=container.status, server=container.labels.get(LABEL_SERVER, ""),
        image=(container.image.tags or [container.image.short_id])[0] if container.image else "",
        volume=next((m.get("Name", "") for m in mounts if m.get("Destination") == "/civic"), ""))


class DockerRuntime:
    """Citizens as containers of one CIVIC instance on this engine."""

    name = "docker"

    def __init__(self, engine: Any, instance: str, image: str, limits: Limits | None = None,
                 network: str | None = None) -> None:
        self.engine, self.instance, self.image = engine, instance, image
        self.limits = limits or Limits()
        self.network = network
        self.host_key = host_key()  # this machine's ($CIVIC_HOST_KEY, or from its machine id)

    @staticmethod
    def default_network(address: str) -> str:
        """``host`` for a server on this machine's loopback (a bridged container's 127.0.0.1
        would be its own), else the default ``bridge``."""
        host, _ = parse_address(address)
        loopback = host == "localhost" or host.startswith("127.") or host == "::1"
        return "host" if loopback else "bridge"

    def container_name(self, name: str) -> str:
        return f"{self.instance}-citizen-{name}"

    def free_names(self, prefix: str, count: int) -> list[str]:
        """The next ``count`` names ``prefix-N`` not taken by a citizen of this instance."""
        taken = {c.name for c in self.list()}
        names, index = [], 1
        while len(names) < count:
            name = f"{prefix}-{index}"
            if name not in taken and find(self.engine, "container",
                                          self.container_name(name)) is None:
                names.append(name)
            index += 1
        return names

    def spawn(self, joining: Joining, names: list[str]) -> list[CitizenContainer]:
        """Start one container per name; on any failure remove what this call created."""
        ensure_image(self.engine, self.image, "build it with `civic image build` or choose "
                                              "another with --image")
        created: list[Any] = []
        try:
            for name in names:
                created.extend(self._start(joining, name))
        except BaseException:
            for thing in reversed(created):
                with errors("cleaning up"):
                    discard(thing)
            raise
        return [_describe(c) for c in created if is_container(c)]

    def _start(self, joining: Joining, name: str) -> list[Any]:
        tags = labels(self.instance, ROLE, **{LABEL_SERVER: joining.address, LABEL_NAME: name})
        made: list[Any] = []
        with errors(f"creating citizen {name}"):
            volume = self.engine.volumes.create(self.container_name(name), labels=tags)
            made.append(volume)
            network = self.network or self.default_network(joining.address)
            placement = ({"network_mode": network} if network in ("host", "none", "bridge")
                         else {"network": network})
            mounts = {volume.name: {"bind": "/civic", "mode": "rw"}}
            if joining.ca is not None:
                mounts[str(joining.ca.resolve())] = {"bind": CA_IN_CONTAINER, "mode": "ro"}
            made.append(self.engine.containers.run(
                self.image, joining.agent_args(name, CA_IN_CONTAINER,
                                               work="/tmp/work",  # duties stay in the tmpfs
                                               host=self.host_key,
                                               memory=self.limits.memory_bytes,
                                               model_user=MODEL_USER),
                name=self.container_name(name), detach=True, labels=tags, user="0",
                environment=joining.env, restart_policy={"Name": "unless-stopped"},
                nano_cpus=int(self.limits.cpus * 1e9), mem_limit=self.limits.memory,
                memswap_limit=self.limits.memory, pids_limit=self.limits.pids,
                read_only=True,  # duties run (and execute their programs) in the tmpfs
                tmpfs={"/tmp": f"rw,exec,nosuid,nodev,size={self.limits.tmpfs}"},
                cap_drop=["ALL"], cap_add=AGENT_CAPABILITIES,
                security_opt=["no-new-privileges"], volumes=mounts, **placement))
        return made

    def list(self) -> list[CitizenContainer]:
        with errors("listing citizens"):
            found = self.engine.containers.list(all=True, filters=selector(self.instance, ROLE))
            return sorted((_describe(c) for c in found), key=lambda c: c.container)

    def select(self, names: list[str], everyone: bool) -> list[Any]:
        """Containers by citizen name (or all of them); an unknown name is an error."""
        with errors("finding citizens"):
            found = self.engine.containers.list(all=True, filters=selector(self.instance, ROLE))
        if everyone:
            return found
        by_name = {c.labels.get(LABEL_NAME): c for c in found}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise NotFound(f"no citizen named {', '.join(missing)}; see: civic citizen list")
        return [by_name[n] for n in names]

    def stop(self, containers: list[Any]) -> None:
        with errors("stopping citizens"):
            for c in containers:
                c.stop(timeout=15)

    def start(self, containers: list[Any]) -> None:
        with errors("starting citizens"):
            for c in containers:
                c.start()

    def remove(self, containers: list[Any]) -> None:
        """Remove citizens and their volumes (identity and bundle cache)."""
        with errors("removing citizens"):
            for c in containers:
                volume = _describe(c).volume
                c.remove(force=True)
                if volume and (v := find(self.engine, "volume", volume)) is not None:
                    v.remove()

    def logs(self, container: Any, tail: int = 100) -> str:
        with errors("reading logs"):
            return container.logs(tail=tail).decode("utf-8", "replace")

    def follow(self, container: Any, tail: int = 100) -> Iterator[str]:
        """The last ``tail`` lines of a citizen's log, then each new one as it is written."""
        with errors("reading logs"):
            for chunk in container.logs(stream=True, follow=True, tail=tail):
                yield chunk.decode("utf-8", "replace")
