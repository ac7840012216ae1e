"""`civic status --watch` in a real terminal (tmux): a running job's progress moves on screen,
and Ctrl-C ends the watch with exit status 0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultkit import CIVIC, Cluster, numbers, square_model, wait_until  # noqa: E402

pytestmark = pytest.mark.e2e

TMUX = shutil.which("tmux")


@pytest.fixture
def tmux():
    """A tmux of this test's own (its own server socket), killed afterwards."""
    if TMUX is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but tmux is not installed")
        pytest.skip("tmux is not installed")
    socket = f"civic-watch-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        return subprocess.run([TMUX, "-L", socket, *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    try:
        yield run
    finally:
        subprocess.run([TMUX, "-L", socket, "kill-server"], capture_output=True, timeout=30)


def done_on_screen(screen: str, dataset: int) -> int | None:
    """The done count of the dataset's row in the datasets table, if the screen shows it."""
    match = re.search(rf"^\s*{dataset}\s+squares v1\s+\d+%\s+\d+\s+(\d+)\s", screen, re.M)
    return int(match.group(1)) if match else None


def test_watch_shows_a_job_moving_and_ends_on_ctrl_c(cluster: Cluster, tmux) -> None:
    cluster.start_server()
    model = square_model(cluster.root / "squares", "squares", sleep=0.2,
                         extra="replication: 1\nquorum: 1\n")
    cluster.add_model(model)
    ds = cluster.import_dataset("squares", numbers(cluster.root / "n.json", 2000))["id"]
    cluster.agent("one")
    cluster.agent("two")
    wait_until(lambda: cluster.progress(ds)["done"] > 0, 120, "a first duty done")

    # The pane's own size, not one a parent process exported.
    command = (f"env -u COLUMNS -u LINES CIVIC_HOME={cluster.home} {CIVIC} status --watch --interval 0.5; "
               "echo watch-exit=$?; sleep 60")
    tmux("new-session", "-d", "-s", "watch", "-x", "200", "-y", "50", command)

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "watch")

    try:
        first = wait_until(lambda: done_on_screen(screen(), ds) is not None, 60,
                           "the datasets table") and done_on_screen(screen(), ds)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the screen:\n{screen()}") from None
    # A few seconds later the same screen (redrawn in place) shows more done.
    later = wait_until(lambda: (n := done_on_screen(screen(), ds)) and n > first and n, 60,
                       f"the done count to move past {first}")
    assert later > first
    text = screen()
    assert text.count("datasets") == 1, text  # redrawn in place, not scrolled
    assert "citizens: 2 connected" in text, text

    tmux("send-keys", "-t", "watch", "C-c")
    wait_until(lambda: "watch-exit=" in screen(), 30, "the watch to end")
    assert "watch-exit=0" in screen(), screen()


@pytest.fixture
def cluster(tmp_path: Path):
    drill = Cluster(tmp_path)
    try:
        yield drill
    finally:
        drill.close()
