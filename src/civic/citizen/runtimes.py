"""Runtimes start and stop citizens on this machine. ``process`` runs each agent as a local
subprocess; the ``docker`` runtime (one hardened container per citizen, ``civic.deploy.citizens``)
plugs into the same seam."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from civic.citizen.options import to_argv
from civic.citizen.sandbox import hide_process


@dataclass(frozen=True)
class Joining:
    """What every citizen a runtime starts needs to work for its server."""

    address: str
    prefetch: int = 1
    token: str | None = None  # never on a command line (ps shows it)
    tls: bool = False
    ca: Path | None = None  # implies TLS

    def agent_args(self, name: str, ca_path: str | None = None, **more: Any) -> list[str]:
        """The agent's arguments: these, then ``more`` (``AgentOptions`` fields, see
        ``civic.citizen.options``); ``ca_path`` is where the agent sees the CA file."""
        return to_argv(address=self.address, name=name, prefetch=self.prefetch, tls=self.tls,
                       ca=(ca_path or self.ca) if self.ca else None, **more)

    @property
    def env(self) -> dict[str, str]:
        """The token as a container's environment carries it (its agent runs as root there,
        non-dumpable, and its models as another user, so they cannot read it)."""
        return {"CIVIC_TOKEN": self.token} if self.token else {}


@dataclass
class Spawned:
    """One citizen started by a runtime."""

    name: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def running(self) -> bool:
        return self.process.poll() is None


class Runtime(Protocol):
    """Starts citizens somewhere: local processes, containers."""

    name: str

    def spawn(self, joining: Joining, names: list[str]) -> list[Any]: ...


class ProcessRuntime:
    """Citizens as child processes of this one, each with its own home under ``homes``.

    The join token reaches each agent on its stdin, never in its environment; this process,
    whose environment may hold it, hides itself (non-dumpable) from the models' user.
    """

    name = "process"

    def __init__(self, homes: Path, log_dir: Path | None = None) -> None:
        self.homes, self.log_dir = homes, log_dir

    def spawn(self, joining: Joining, names: list[str]) -> list[Spawned]:
        hide_process()
        spawned: list[Spawned] = []
        try:
            for name in names:
                home = self.homes / name
                log = (self.log_dir / f"{name}.log") if self.log_dir else None
                spawned.append(Spawned(name, home, self._start(joining, name, home, log), log))
        except BaseException:
            self.stop(spawned)
            raise
        return spawned

    @staticmethod
    def _start(joining: Joining, name: str, home: Path, log: Path | None
               ) -> subprocess.Popen[bytes]:
        home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "civic.citizen.agent",
                   *joining.agent_args(name, home=home, parent=os.getpid(),
                                       token_file="-" if joining.token else None)]
        out: IO[bytes] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")
        # CIVIC_HOST_KEY and the rest pass through; the token goes on stdin instead.
        env = {k: v for k, v in os.environ.items() if k != "CIVIC_TOKEN"}
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                       env=env)
        finally:
            if out is not None:
                out.close()
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(f"{joining.token or ''}\n".encode())
        process.stdin.close()
        return process

    def stop(self, citizens: list[Spawned], timeout: float = 10.0) -> None:
        """SIGTERM every citizen (they finish cleanly), then SIGKILL whoever is still there."""
        for citizen in citizens:
            with contextlib.suppress(ProcessLookupError):
                citizen.process.send_signal(signal.SIGTERM)
        for citizen in citizens:
            try:
                citizen.process.wait(timeout)
            except subprocess.TimeoutExpired:
                citizen.process.kill()
                citizen.process.wait()
