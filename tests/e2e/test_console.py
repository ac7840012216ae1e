"""`civic server console` in a real terminal: tmux runs the installed command against a running
job, the tests type with send-keys and read the screen with capture-pane, as a person would.

Without tmux these tests skip with the reason; with CI=true they fail instead (CI installs it).
Set CIVIC_CONSOLE_SCREEN=DIR to keep the screen captured during the run (docs/console-screen*).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from civic_cli import CIVIC, Civic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultkit import Cluster, numbers, square_model, wait_until  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

WIDTH, HEIGHT = 120, 50
RULE = "── output:"  # the line between the status and the output pane


class Tmux:
    """One tmux server of the test's own (its own socket) with one window, WIDTH x HEIGHT."""

    def __init__(self, binary: str, socket: Path) -> None:
        self.base = [binary, "-S", str(socket)]

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, env=env,
                              timeout=30)
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        """Run ``argv`` in a new window; when it ends, the window says how and stays."""
        command = " ".join(map(_quote, argv)) + '; echo "console exited: $?"; sleep 600'
        if self.running():
            self.tmux("kill-session", "-t", "console")
        self.tmux("new-session", "-d", "-s", "console", "-x", str(WIDTH), "-y", str(HEIGHT),
                  *(f"-e{k}={env[k]}" for k in ("CIVIC_HOME", "PATH") if k in env),
                  command, env=env)

    def running(self) -> bool:
        return subprocess.run([*self.base, "has-session", "-t", "console"],
                              capture_output=True).returncode == 0

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "console", "-l", text)
        self.tmux("send-keys", "-t", "console", "Enter")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "console", *keys)

    def screen(self, colours: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if colours else []), "-t", "console")

    def wait_for(self, seen: str | Callable[[str], object], timeout: float = 60) -> str:
        """The screen, once it shows ``seen`` (text, or a test of the screen)."""
        test = (lambda s: seen in s) if isinstance(seen, str) else seen
        last = ""

        def shown() -> bool:
            nonlocal last
            last = self.screen()
            return bool(test(last))
        try:
            wait_until(shown, timeout, f"{seen!r} on the console's screen", 0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen was:\n{last}") from None
        return last

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    binary = shutil.which("tmux")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but tmux is not installed: the console needs a real terminal")
        pytest.skip("tmux is not installed: the console is tested in a real terminal")
    terminal = Tmux(binary, tmp_path / "tmux.sock")
    try:
        yield terminal
    finally:
        terminal.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    drill = Cluster(tmp_path)
    try:
        yield drill
    finally:
        drill.close()


def status_pane(screen: str) -> str:
    return screen.split(RULE)[0]


def output_pane(screen: str) -> str:
    return screen.split(RULE, 1)[1] if RULE in screen else ""


def progress(screen: str, model: str) -> str | None:
    """The progress of ``model``'s dataset in the status pane ("12%")."""
    for line in status_pane(screen).splitlines():
        found = re.search(r"\b\d+%", line) if f"{model} v" in line else None
        if found:
            return found.group(0)
    return None


def insert_events(url: str, messages: list[str]) -> None:
    """Events as a server writes them (one transaction)."""
    with psycopg.connect(url, autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO events (level, logger, message) VALUES (%s, %s, %s)",
                            [("WARNING" if i % 5 == 4 else "INFO", "civic.server", m)
                             for i, m in enumerate(messages)])


def test_console_during_a_run(cluster: Cluster, tmux: Tmux, tmp_path: Path) -> None:
    model = square_model(tmp_path / "square", "square", sleep=0.5, extra="replication: 1\n")
    cluster.add_model(model)
    dataset = cluster.import_dataset("square", numbers(tmp_path / "numbers.json", 60))["id"]
    cluster.start_server()
    cluster.spawn(2)
    tmux.start([CIVIC, "server", "console"], cluster.civic.env)

    # The status on top shows the dataset, and its progress moves while we watch.
    first = progress(tmux.wait_for(lambda s: progress(s, "square") not in (None, "0%")),
                     "square")
    moved = tmux.wait_for(lambda s: progress(s, "square") not in (None, first))
    assert "citizens" in status_pane(moved)  # the citizens table: they are connected

    tmux.type("datasets")
    screen = tmux.wait_for(lambda s: "square v1" in output_pane(s))
    assert "civic> datasets" in output_pane(screen)
    assert "source" in output_pane(screen) and "pending" in output_pane(screen)

    tmux.type("help")  # longer than the pane: its end, then its top
    screen = tmux.wait_for("keys: PageUp")
    assert "civic commands" in output_pane(screen) and "dataset" in output_pane(screen)
    tmux.keys("C-Home")
    screen = tmux.wait_for("short forms")
    for word in ("logs", "quit", "datasets", "pause ID"):
        assert word in output_pane(screen), word
    tmux.keys("C-End")

    tmux.type("frobnicate 3")
    tmux.wait_for("unknown command: frobnicate")

    # A command that fails says why, and the console carries on.
    tmux.type("results nosuchmodel")
    tmux.wait_for("error: no model named 'nosuchmodel'")
    tmux.type("models")
    screen = tmux.wait_for(lambda s: "civic> models" in s and "square" in
                           output_pane(s).split("civic> models")[-1])

    tmux.type("results square")  # verified results so far, as CSV
    tmux.wait_for(lambda s: "duty,record,n,square" in output_pane(s))

    # `duty ID` is `civic duty show ID`; `pause ID` is `civic dataset pause ID`: the status
    # pane says so, and no server leases the dataset until `resume ID`.
    tmux.type("duty 3")
    screen = tmux.wait_for(lambda s: "duty 3 of dataset" in output_pane(s))
    assert "input" in output_pane(screen)
    tmux.type(f"pause {dataset}")
    screen = tmux.wait_for(lambda s: f"dataset {dataset} paused" in output_pane(s)
                           and "paused" in status_pane(s))
    paused_at = cluster.sql("SELECT paused_at FROM datasets WHERE id = %s",
                            (dataset,))[0]["paused_at"]
    assert paused_at is not None
    committed = cluster.sql("SELECT clock_timestamp() AS t")[0]["t"]
    time.sleep(3)  # citizens keep asking; nothing of the dataset may be leased meanwhile
    assert cluster.sql("SELECT count(*) AS n FROM replicas r JOIN duties d ON d.id = r.duty_id"
                       " WHERE d.dataset_id = %s AND r.leased_at > %s",
                       (dataset, committed))[0]["n"] == 0
    if os.environ.get("CIVIC_CONSOLE_SCREEN"):
        keep = Path(os.environ["CIVIC_CONSOLE_SCREEN"])
        (keep / "console-screen.txt").write_text(tmux.screen())
        (keep / "console-screen.ansi").write_text(tmux.screen(colours=True))
    tmux.type(f"resume {dataset}")
    tmux.wait_for(lambda s: f"dataset {dataset} resumed" in output_pane(s))
    assert not cluster.sql("SELECT paused_at FROM datasets WHERE id = %s", (dataset,))[0]["paused_at"]

    # logs: the servers' events, followed live.
    tmux.type("logs")
    tmux.wait_for("following logs")
    insert_events(cluster.url, ["console drill event one", "console drill event two"])
    tmux.wait_for("console drill event two")
    tmux.keys("Escape")
    tmux.wait_for("stopped following logs")

    tmux.type("quit")
    tmux.wait_for("console exited: 0")


def test_console_stays_responsive_and_bounded(cluster: Cluster, tmux: Tmux) -> None:
    """5,000 log lines poured into the pane: it answers help at once after, and keeps only
    the last 2,000 lines (the seed's console froze after 1,000)."""
    tmux.start([CIVIC, "server", "console"], cluster.civic.env)
    tmux.wait_for("Type help for the commands")
    tmux.type("logs")
    tmux.wait_for("following logs")
    insert_events(cluster.url, [f"flood {n}" for n in range(1, 5001)])
    tmux.wait_for("flood 5000")
    tmux.type("help")
    screen = tmux.wait_for("keys: PageUp", timeout=30)
    assert "output: 2000 lines" in screen  # the pane's cap, whatever came in
    assert re.search(r"the oldest \d+ dropped", screen)

    # Scrolled to the top, the first line kept is from the last 2,000.
    tmux.keys("C-Home")
    screen = tmux.wait_for("scrolled back")
    top = output_pane(screen).splitlines()[1]
    kept = int(re.search(r"flood (\d+)", top).group(1))  # type: ignore[union-attr]
    assert kept > 3000, top
    tmux.keys("C-End")
    tmux.type("datasets")
    tmux.wait_for(lambda s: "no datasets yet" in output_pane(s))


def test_console_finds_the_installation_and_keeps_its_history(cluster: Cluster, tmux: Tmux,
                                                              tmp_path: Path) -> None:
    """On the lab machine the database is the one `civic server install` wrote into the config
    file; the command line's history survives the console."""
    model = square_model(tmp_path / "square", "lab-model")
    cluster.add_model(model)
    lab = Civic(tmp_path / "lab-home")
    lab.home.mkdir()
    (lab.home / "config.yaml").write_text(f"database_url: '{cluster.url}'\n")  # as install does
    tmux.start([CIVIC, "server", "console"], lab.env)
    tmux.wait_for("Type help for the commands")
    tmux.type("models")
    tmux.wait_for(lambda s: "lab-model" in output_pane(s))
    tmux.type("exit")
    tmux.wait_for("console exited: 0")
    assert "models" in (lab.home / "console_history").read_text()

    tmux.start([CIVIC, "server", "console"], lab.env)
    tmux.wait_for("Type help for the commands")
    tmux.keys("Up")  # the last line typed: exit
    tmux.wait_for(lambda s: s.rstrip().endswith("civic> exit"))
    tmux.keys("Up")
    tmux.wait_for(lambda s: s.rstrip().endswith("civic> models"))
    tmux.keys("C-u", "C-d")
    tmux.wait_for("console exited: 0")


def test_console_needs_a_terminal(civic: Civic) -> None:
    done = civic("server", "console")
    assert done.returncode == 2
    assert "needs a terminal" in done.stderr and "civic status --watch" in done.stderr
    assert "Traceback" not in done.stderr
