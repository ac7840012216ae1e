"""Helpers for end-to-end tests: drive the installed ``civic`` command in subprocesses, as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALPHABET = ROOT / "examples" / "alphabet"
CIVIC = str(Path(sys.executable).with_name("civic"))  # the console script of this environment


class Civic:
    """Runs ``civic`` with one CIVIC_HOME, so its embedded database is private to the test."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.env = {**os.environ, "CIVIC_HOME": str(home), **env}
        self.env.pop("CIVIC_DATABASE_URL", None)
        self.started: list[subprocess.Popen[str]] = []

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CIVIC, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A long-running civic command (server, spawn); stopped at the end of the test."""
        process = subprocess.Popen([CIVIC, *args], env=self.env, text=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def wait_done(self, dataset: int, timeout: float = 180) -> dict[str, Any]:
        """Poll ``civic dataset list --json`` until no duty of the dataset is pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = next(d for d in self.json("dataset", "list") if d["id"] == dataset)
            if row["pending"] == 0:
                return row
            time.sleep(1)
        raise AssertionError(f"dataset {dataset} not finished after {timeout}s")


def write_model(directory: Path, manifest: str, **files: str) -> Path:
    """A model directory: its civic.yaml and the files named by keyword."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "civic.yaml").write_text(manifest)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float = 60) -> list[str]:
    """Read a process's output until a line contains ``text``; returns the lines read."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never appeared; output was:\n{''.join(lines)}")


def next_letter(letter: str) -> str:
    return "a" if letter == "z" else chr(ord(letter) + 1)
