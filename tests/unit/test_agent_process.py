"""A citizen started by the process runtime never outlives the process that spawned it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The parent starts a citizen (pointing at a port where nothing listens, so it keeps retrying),
# prints the citizen's pid, and waits to be killed.
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "civic.citizen.agent", "127.0.0.1:9",
                          "--home", sys.argv[1], "--parent", str(os.getpid())],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; nobody may be reaping it here


def test_citizen_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "home")],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    citizen = int(parent.stdout.readline())
    try:
        time.sleep(1.5)
        assert alive(citizen), "the citizen should run while its parent does"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while alive(citizen) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(citizen), "the orphaned citizen should have stopped"
    finally:
        if alive(citizen):
            os.kill(citizen, signal.SIGKILL)
