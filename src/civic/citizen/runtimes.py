"""Runtimes start and stop citizens on this machine. ``process`` runs each agent as a local
subprocess; a ``docker`` runtime (one hardened container per citizen) plugs into the same seam."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol


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
    name: str

    def spawn(self, address: str, names: list[str], homes: Path,
              log_dir: Path | None = None, prefetch: int = 1,
              token: str | None = None, tls: bool = False,
              ca: Path | None = None) -> list[Spawned]: ...

    def stop(self, citizens: list[Spawned], timeout: float = 10.0) -> None: ...


class ProcessRuntime:
    """Citizens as child processes of this one, each with its own home under ``homes``."""

    name = "process"

    def spawn(self, address: str, names: list[str], homes: Path,
              log_dir: Path | None = None, prefetch: int = 1,
              token: str | None = None, tls: bool = False,
              ca: Path | None = None) -> list[Spawned]:
        """Start one agent per name (speaking TLS when ``tls``, checked against ``ca``)."""
        spawned: list[Spawned] = []
        try:
            for name in names:
                home = homes / name
                log = (log_dir / f"{name}.log") if log_dir else None
                process = self._start(address, name, home, log, prefetch, token, tls, ca)
                spawned.append(Spawned(name, home, process, log))
        except BaseException:
            self.stop(spawned)
            raise
        return spawned

    @staticmethod
    def _start(address: str, name: str, home: Path, log: Path | None, prefetch: int,
               token: str | None, tls: bool, ca: Path | None) -> subprocess.Popen[bytes]:
        home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "civic.citizen.agent", address, "--name", name,
                   "--home", str(home), "--prefetch", str(prefetch), "--parent", str(os.getpid())]
        command += (["--tls"] if tls else []) + (["--ca", str(ca)] if ca else [])
        out: IO[bytes] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")
        try:
            env = {**os.environ, **({"CIVIC_TOKEN": token} if token else {})}  # not argv: ps
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=env)
        finally:
            if out is not None:
                out.close()

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
