"""The citizen agent: connect, authenticate, lease duties, compute them, send results — forever.

Standard library and ``civic.protocol`` only, so a volunteer's container needs nothing but Python.
Run it as ``python -m civic.citizen.agent HOST:PORT --home DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import ssl
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from civic import protocol as p
from civic.citizen.bundles import Fingerprint, copy_tree, fingerprint, unpack_bundle
from civic.citizen.execute import build, check_sandbox, run_model
from civic.citizen.options import AgentOptions, build_parser
from civic.citizen.sandbox import Sandbox, become_subreaper, hide_process
from civic.errors import (BundleChanged, CivicError, Incompatible, ModelFailed, ProtocolError,
                          Refused)

log = logging.getLogger("civic.citizen")

READ_TIMEOUT = 120.0  # the server answers every request well within this
MAX_PREFETCH = 32  # the server's default cap on the replicas one citizen holds


@dataclass(eq=False)
class _Fetch:
    """The one bundle being fetched: the reader streams its payload to ``part``."""

    sha: str
    part: Path
    done: asyncio.Future[None]


@dataclass(eq=False)
class _Link:
    """One connection's pipeline: what is queued, asked for and being fetched on it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    batches: bool  # the server takes ``results`` frames and answers them with ``acks``
    # leased and not started yet, with the monotonic time each was received
    queue: asyncio.Queue[tuple[p.Assignment, float]] = field(default_factory=asyncio.Queue)
    current: p.Assignment | None = None  # taken from the queue: being fetched, built or run
    asking: bool = False  # a duty request is outstanding
    ahead: bool = False  # lease one more than prefetch (see Agent._ask_ahead)
    resume: float = 0.0  # no request before this monotonic time (the server said no-work)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the lease loop looks again
    fetch: _Fetch | None = None
    closed: bool = False  # the connection ended: nothing more is started or sent on it

    async def fetch_bundle(self, sha: str, part: Path) -> None:
        self.fetch = _Fetch(sha, part, asyncio.get_running_loop().create_future())
        try:
            await p.send(self.writer, p.FetchBundle(sha))
            await self.fetch.done
        finally:
            self.fetch = None

    async def receive_bundle(self, header: p.Bundle) -> None:
        """The payload that follows a bundle header, streamed to the pending fetch's file."""
        fetch = self.fetch
        if fetch is None or header.sha256 != fetch.sha:
            raise ProtocolError("expected the bundle that was asked for")
        with open(fetch.part, "wb") as f:
            async for chunk in p.read_payload(self.reader, header.size):
                f.write(chunk)
        if not fetch.done.done():  # (the worker may have been cancelled meanwhile)
            fetch.done.set_result(None)

    def fail_fetch(self) -> None:
        if self.fetch is not None and not self.fetch.done.done():
            self.fetch.done.set_exception(
                ProtocolError("connection closed before the bundle arrived"))


class Agent:
    """One citizen. Results not yet acknowledged survive a reconnect and are sent again."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.host, self.port = p.parse_address(options.address)
        self.identity_file = options.home / "identity.json"
        self.bundles = options.home / "bundles"
        self.sandbox = Sandbox.for_agent(options.model_user, options.landlock)
        self.work = options.work or options.home / "work"
        self.private_work: Path | None = None  # made by this agent, removed when it stops
        self.fingerprints: dict[str, Fingerprint] = {}  # bundles checked in this agent's life
        self.tls = self._tls()
        self.unacked: dict[int, p.Result] = {}
        self.held: set[int] = set()  # leased to us and not yet acknowledged: heartbeats say so
        self.running: int | None = None  # the replica being computed now
        self.prefetch = max(1, min(options.prefetch, MAX_PREFETCH))
        self.failures = 0
        self.host_key = options.host or host_key()
        self.memory = options.memory or physical_memory()

    async def run(self) -> None:
        """Connect and serve until cancelled; reconnect with capped exponential backoff + jitter."""
        self._prepare()
        try:
            await self._check_sandbox()
            await self._serve()
        finally:
            if self.private_work is not None:
                self.sandbox.remove(self.private_work)

    def _prepare(self) -> None:
        """Home and work directories the models cannot reach into beyond their own duty."""
        home = self.options.home
        home.mkdir(parents=True, exist_ok=True)
        if self.sandbox.uid is not None:
            # Models have a uid of their own: the home (credential, bundle cache) is closed to
            # them, so their duties run elsewhere, in a directory they can only traverse.
            if home.stat().st_uid != os.geteuid():  # e.g. a volume of an older citizen image
                self.sandbox.reclaim(home)
            home.chmod(0o700)
            if self.options.work is None:
                _remove_stale_work(self.sandbox)
                self.private_work = Path(tempfile.mkdtemp(prefix=f"civic-work-{os.getpid()}-"))
                self.work = self.private_work
            self.work.mkdir(parents=True, exist_ok=True)
            self.work.chmod(0o711)
            if blocked := _closed_to_others(self.work):
                raise CivicError(f"models run as uid {self.sandbox.uid} and cannot reach the "
                                 f"work directory {self.work}: {blocked} is closed to other "
                                 "users; choose another with --work")
        elif self.options.work is None and self.work.is_dir():  # this citizen's alone
            for stale in self.work.iterdir():  # left by a citizen killed mid-duty
                if stale.name.startswith(("duty-", "build-")):
                    self.sandbox.remove(stale)
        self.work.mkdir(parents=True, exist_ok=True)
        log.info("%s", self.sandbox.describe())

    async def _check_sandbox(self) -> None:
        """Fail at once, saying why, when models cannot be run contained here (say, a uid
        the system refuses), rather than fail every duty."""
        try:
            probe = Path(tempfile.mkdtemp(prefix="build-probe-", dir=self.work))
        except OSError as exc:
            raise CivicError(f"cannot use the work directory {self.work}: {exc}") from None
        try:
            await check_sandbox(probe, self.sandbox)
        except ModelFailed as exc:
            raise CivicError(f"cannot run models here ({self.sandbox.describe()}): {exc}; "
                             "see --model-user and --no-landlock") from None
        finally:
            self.sandbox.remove(probe)

    async def _serve(self) -> None:
        while True:
            try:  # asyncio.timeout, not wait_for: 3.11's loses a cancel landing as it ends
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection(self.host, self.port,
                                                                   ssl=self.tls)
            except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
                await self._backoff(f"cannot reach {self.host}:{self.port} ({exc or 'timeout'})")
                continue
            try:
                await self._session(reader, writer)
                reason = "server closed the connection"
            except (ProtocolError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
                reason = f"connection lost: {exc or type(exc).__name__}"
            except asyncio.CancelledError:
                # Stopping on purpose: say so, so the server re-issues our duties without
                # counting them as failures. Buffered; close() flushes it.
                writer.write(p.encode(p.Bye("citizen stopping")))
                raise
            finally:
                writer.close()
            await self._backoff(reason)

    def _tls(self) -> ssl.SSLContext | None:
        if not (self.options.tls or self.options.ca):
            return None
        try:
            return ssl.create_default_context(
                cafile=str(self.options.ca) if self.options.ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise CivicError(f"cannot load the CA file {self.options.ca}: {exc}") from None

    async def _backoff(self, reason: str) -> None:
        delay = min(self.options.backoff_cap, self.options.backoff_base * 2 ** self.failures)
        delay = random.uniform(delay / 2, delay)  # jitter: citizens of one server spread out
        self.failures = min(self.failures + 1, 16)
        log.info("%s; retrying in %.1fs", reason, delay)
        await asyncio.sleep(delay)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        welcome = await self._greet(reader, writer)
        link = _Link(reader, writer, batches=p.BATCHES in welcome.features)
        heartbeat = asyncio.ensure_future(self._heartbeat(writer, welcome.heartbeat))
        try:
            if self.unacked:  # the server expects them first: the hello said we hold them
                await self._send_results(link, list(self.unacked.values()))
            await self._pipeline(link)
        finally:
            heartbeat.cancel()

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> p.Welcome:
        identity = self._load_identity()
        await p.send(writer, p.Hello(p.PROTOCOL_VERSION, self.options.name, _platform(),
                                     identity.get("citizen_id"), identity.get("secret"),
                                     self.options.token, host=self.host_key, memory=self.memory,
                                     builds=shutil.which("cc") is not None,
                                     held=sorted(self.unacked), features=[p.BATCHES]))
        welcome = await self._read(reader)
        if isinstance(welcome, p.Error) and welcome.code == "version":
            raise Incompatible(f"this citizen speaks protocol version {p.PROTOCOL_VERSION}, "
                               f"which the server refuses: {welcome.message}")
        if isinstance(welcome, p.Error) and welcome.code == "refused":
            raise Refused(f"the server refused this citizen: {welcome.message}")
        if not isinstance(welcome, p.Welcome):
            self._closing(welcome)  # says what an error frame said
            raise ProtocolError(f"expected welcome, got {welcome.type}")
        if welcome.secret:
            self._save_identity(welcome.citizen_id, welcome.secret)
        self.held = set(self.unacked)  # what the last connection held and is not ours any more
        log.info("connected to %s:%s as %s (%s)", self.host, self.port, self.options.name,
                 welcome.citizen_id[:8])
        self.failures = 0
        return welcome

    async def _pipeline(self, link: _Link) -> None:
        """Read, lease and compute side by side until the connection ends; the replica running
        then is finished (its result goes out on the next connection), the queued ones are
        dropped (the next hello does not hold them, so the server frees them at once)."""
        reading = asyncio.ensure_future(self._read_frames(link))
        working = asyncio.ensure_future(self._work(link))
        leasing = asyncio.ensure_future(self._lease(link))
        tasks = (reading, working, leasing)
        link.wake.set()
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            link.closed = True
            leasing.cancel()
            refused = (reading.done() and not reading.cancelled()
                       and isinstance(reading.exception(), Refused))
            if link.current is None or refused:  # refused: its replicas went to others
                working.cancel()
            await asyncio.wait({working})
            for task in tasks:  # the reader's reason first: it says why the link ended
                if task.done() and not task.cancelled() and (error := task.exception()):
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_frames(self, link: _Link) -> None:
        """Every frame from the server, dispatched; returns on bye, raises on an error frame."""
        try:
            while await self._dispatch(link, await self._next_frame(link)):
                pass
        finally:
            link.fail_fetch()  # no bundle comes after this

    async def _dispatch(self, link: _Link, message: p.Message) -> bool:
        """Handle one frame; False when the server said bye."""
        if isinstance(message, p.Duty):
            self._take(link, message)
        elif isinstance(message, p.Acks):
            self._acked(message.acks)
        elif isinstance(message, p.Ack):
            self._acked([message])
        elif isinstance(message, p.NoWork):
            link.asking = link.ahead = False  # one request ahead per replica started
            link.resume = time.monotonic() + message.retry_after * random.uniform(0.8, 1.2)
            link.wake.set()
        elif isinstance(message, p.Bundle):
            await link.receive_bundle(message)
        else:
            self._closing(message)  # raises unless it is a bye
            return False
        return True

    async def _next_frame(self, link: _Link) -> p.Message:
        """The next frame. A quiet server is fine while nothing is asked of it (the model runs)
        and for up to READ_TIMEOUT while something is (it may park a duty request)."""
        read = asyncio.ensure_future(p.read_message(link.reader))
        since: float | None = None  # when we were first seen waiting for an answer
        try:
            while not (await asyncio.wait({read}, timeout=min(1.0, READ_TIMEOUT)))[0]:
                if not (link.asking or link.fetch or self.unacked):
                    since = None
                elif since is None:
                    since = time.monotonic()
                elif time.monotonic() - since >= READ_TIMEOUT:
                    raise asyncio.TimeoutError(f"no answer from the server in {READ_TIMEOUT:g}s")
            return read.result()
        finally:
            read.cancel()

    def _take(self, link: _Link, duty: p.Duty) -> None:
        received = time.monotonic()
        link.asking = False
        self.held.update(a.replica_id for a in duty.assignments)
        for assignment in duty.assignments:
            link.queue.put_nowait((assignment, received))
        link.wake.set()  # fewer than asked for: ask again

    def _acked(self, acks: list[p.Ack]) -> None:
        for ack in acks:
            self.unacked.pop(ack.replica_id, None)
            self.held.discard(ack.replica_id)
            if not ack.accepted:
                log.warning("result for replica %d refused: %s", ack.replica_id, ack.reason)

    async def _lease(self, link: _Link) -> None:
        """Keep up to ``prefetch`` replicas here (running + queued), with at most one request
        outstanding, so the next duty is here when the model finishes."""
        while True:
            await link.wake.wait()
            await asyncio.sleep(max(0.0, link.resume - time.monotonic()))  # after a no-work
            link.wake.clear()
            holding = link.queue.qsize() + (link.current is not None)
            count = self.prefetch + link.ahead - holding
            if count > 0 and not link.asking:
                link.asking = True
                await p.send(link.writer, p.RequestDuty(count))

    async def _work(self, link: _Link) -> None:
        """Compute the queued replicas one at a time; send each result without waiting for its
        ack (it comes whenever the server has stored it)."""
        while True:
            assignment, received = await link.queue.get()
            if (assignment.start_within is not None
                    and time.monotonic() - received > assignment.start_within):
                # The server gave it up already: another citizen computes it.
                log.info("replica %d not started within %.0fs; skipped",
                         assignment.replica_id, assignment.start_within)
                self.held.discard(assignment.replica_id)
                link.wake.set()
                continue
            link.current = assignment
            try:
                result = await self._compute(link, assignment)
            finally:
                link.current, link.ahead = None, False
                link.wake.set()
            self.unacked[result.replica_id] = result
            if link.closed:  # kept for the next connection
                return
            await self._send_results(link, [result])

    async def _send_results(self, link: _Link, results: list[p.Result]) -> None:
        frames = ([p.Results(batch) for batch in _batches(results)] if link.batches
                  else results)  # an older server takes them one by one (and acks in order)
        for frame in frames:
            link.writer.write(p.encode(frame))
        await link.writer.drain()

    @staticmethod
    def _closing(message: p.Message) -> None:
        if isinstance(message, p.Error) and message.code == "refused":
            # Blocked, or its volunteer blocked or removed: reconnecting would only be refused
            # again, so the citizen stops, saying why (exit status 7).
            raise Refused(f"the server refused this citizen: {message.message}")
        if isinstance(message, p.Error):
            raise ProtocolError(f"server error ({message.code}): {message.message}")
        if not isinstance(message, p.Bye):
            raise ProtocolError(f"unexpected {message.type} message from the server")
        log.info("server said bye: %s", message.reason)

    async def _read(self, reader: asyncio.StreamReader) -> p.Message:
        async with asyncio.timeout(READ_TIMEOUT):  # (see _serve)
            return await p.read_message(reader)

    async def _heartbeat(self, writer: asyncio.StreamWriter, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionError, OSError):
                await self._beat(writer)

    async def _beat(self, writer: asyncio.StreamWriter) -> None:
        running = [] if self.running is None else [self.running]
        await p.send(writer, p.Heartbeat(sorted(self.held), running))

    async def _compute(self, link: _Link, assignment: p.Assignment) -> p.Result:
        try:
            result = await self._contained(link, assignment)
        except ModelFailed as exc:
            result = p.Result(assignment.replica_id, None, error=str(exc),
                              stderr_tail=exc.stderr_tail)
        finally:
            self.running = None
        result = _sendable(result)
        log.info("duty %d (replica %d): %s in %.2fs", assignment.duty_id, assignment.replica_id,
                 result.error or "ok", result.elapsed)
        return result

    async def _contained(self, link: _Link, assignment: p.Assignment) -> p.Result:
        """Run the replica on a copy of its bundle, checked against the bundle's fingerprint;
        a bundle that changed on disk is thrown away, fetched and built again (once)."""
        for attempt in (1, 2):
            bundle_dir, known = await self._bundle(link, assignment)
            if self.running is None:  # fetched and built: the model's run starts its deadline
                self.running = assignment.replica_id
                await self._beat(link.writer)
                self._ask_ahead(link, assignment)
            try:
                return await run_model(assignment, bundle_dir, self.work, self.sandbox, known)
            except BundleChanged as exc:
                log.warning("%s; fetching it again", exc)
                self.fingerprints.pop(assignment.bundle_sha256, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _ask_ahead(self, link: _Link, running: p.Assignment) -> None:
        """With prefetch 1, lease one more while a replica runs, so its successor is here when
        it ends — but only when the model's timeout is shorter than the start window: the one
        queued behind it then surely starts within its window, where otherwise the server
        would give it up unstarted and lease it elsewhere (a lease wasted)."""
        link.ahead = (self.prefetch == 1 and running.start_within is not None
                      and running.timeout < running.start_within)
        link.wake.set()

    async def _bundle(self, link: _Link, assignment: p.Assignment) -> tuple[Path, Fingerprint]:
        """The built bundle and its fingerprint. A tree this agent has not fetched and checked
        itself (left by an earlier run, or changed since) is never trusted: it is fetched,
        verified, unpacked and built again."""
        sha = assignment.bundle_sha256
        dest = self.bundles / sha
        if (known := self.fingerprints.get(sha)) is not None:
            return dest, known
        if os.path.lexists(dest):
            self.sandbox.remove(dest)
        self.bundles.mkdir(parents=True, exist_ok=True)
        part = self.bundles / f"{sha}.part"
        try:
            await link.fetch_bundle(sha, part)
            if assignment.build:
                await self._build(part, sha, assignment.build, dest)
            else:
                unpack_bundle(part, dest, sha)
        finally:
            part.unlink(missing_ok=True)
        log.info("fetched bundle %s for %s v%d", sha[:12], assignment.model,
                 assignment.model_version)
        try:
            self.fingerprints[sha] = fingerprint(dest)
        except OSError as exc:
            raise ModelFailed(f"bundle {sha[:12]}: cannot read it back: {exc}") from None
        return dest, self.fingerprints[sha]

    async def _build(self, archive: Path, sha: str, command: str, dest: Path) -> None:
        """Unpack into a fresh directory under the work root, build there as a model runs,
        then seal a copy of the result (the agent's own files) into the cache at ``dest``."""
        holder = Path(tempfile.mkdtemp(prefix=f"build-{sha[:12]}-", dir=self.work))
        holder.chmod(0o755)
        try:
            tree = holder / "bundle"
            unpack_bundle(archive, tree, sha)
            await build(tree, command, self.sandbox)
            staging = Path(tempfile.mkdtemp(prefix=f".{sha}.", dir=self.bundles))
            try:
                copy_tree(tree, staging)
                os.rename(staging, dest)
            except OSError as exc:
                raise ModelFailed(f"bundle {sha[:12]}: cannot keep the built files: {exc}"
                                  ) from None
            finally:
                if staging.exists():
                    self.sandbox.remove(staging)
        finally:
            self.sandbox.remove(holder)

    def _load_identity(self) -> dict[str, str]:
        try:
            data = json.loads(self.identity_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_identity(self, citizen_id: str, secret: str) -> None:
        tmp = self.identity_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a credential
        with os.fdopen(fd, "w") as f:
            json.dump({"citizen_id": citizen_id, "secret": secret}, f)
        os.replace(tmp, self.identity_file)


def _sendable(result: p.Result) -> p.Result:
    """The result, or, when the wire cannot carry it (NaN, a lone surrogate, a frame above the
    limit once encoded, alone or in a ``results`` frame), an error result saying why: the
    citizen goes on either way."""
    try:
        p.encode(result)
        p.encode(p.Results([result]))  # a few bytes longer
        return result
    except ProtocolError as exc:
        return p.Result(result.replica_id, result.exit_code,
                        error=f"output cannot be sent: {exc}",
                        stderr_tail=result.stderr_tail, elapsed=result.elapsed)


def _batches(results: list[p.Result]) -> list[list[p.Result]]:
    """The results cut into ``results`` frames that fit the frame limit (a result's own frame
    is longer than its share of a batch, so their sum bounds a batch's size)."""
    batches: list[list[p.Result]] = [[]]
    size = 0
    for result in results:
        length = len(p.encode(result))
        if batches[-1] and size + length > p.MAX_FRAME - 64:
            batches.append([])
            size = 0
        batches[-1].append(result)
        size += length
    return batches


def _remove_stale_work(sandbox: Sandbox) -> None:
    """Remove the private work directories of agents that are gone (killed mid-duty)."""
    for stale in Path(tempfile.gettempdir()).glob("civic-work-*-*"):
        try:
            os.kill(int(stale.name.split("-")[2]), 0)
        except ProcessLookupError:
            sandbox.remove(stale)
        except (ValueError, PermissionError):
            continue


def _closed_to_others(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that other users cannot traverse."""
    for directory in [*reversed(path.parents), path]:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory
    return None


def host_key() -> str:
    """A key shared by every citizen of this machine: $CIVIC_HOST_KEY when set, else a hash of
    its machine id (or host name)."""
    if given := os.environ.get("CIVIC_HOST_KEY", "").strip():
        return given
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            if machine := Path(path).read_text().strip():
                break
    else:
        machine = socket.gethostname()
    return hashlib.sha256(f"civic-host:{machine}".encode()).hexdigest()[:16]


def physical_memory() -> int:
    """Bytes of physical memory on this machine (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _platform() -> str:
    return f"{platform.system().lower()}-{platform.machine()} python{platform.python_version()}"


def read_token(path: Path | None) -> str | None:
    """The join token: from a file (``-``: the first line of stdin, as the process runtime
    passes it), or CIVIC_TOKEN — never the command line, which ``ps`` shows.

    A process holding the token in its environment hides itself (non-dumpable), so that
    processes of its user cannot read it from /proc/PID/environ.
    """
    if path is None:
        token = os.environ.get("CIVIC_TOKEN") or None
        if token:
            hide_process()
        return token
    if str(path) == "-":
        return sys.stdin.readline().strip() or None
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise CivicError(f"cannot read the token file {path}: {exc.strerror}") from None


def default_home(name: str) -> Path:
    base = os.environ.get("CIVIC_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share",
                                                        "civic")
    return Path(base) / "citizens" / name


async def _orphaned(parent: int) -> None:
    """Return once the parent that spawned this citizen has died (it never outlives its runtime)."""
    while os.getppid() == parent:
        await asyncio.sleep(1)
    log.warning("parent process %d is gone; stopping", parent)


def run(options: AgentOptions) -> int:
    """Run one citizen in the foreground until SIGINT/SIGTERM; returns the exit status."""

    # Models must not read this process's environment or memory (the join token), nor escape
    # its reach by double-forking: their orphans become its children, to be killed.
    hide_process()
    become_subreaper()

    async def main() -> None:
        task = asyncio.ensure_future(Agent(options).run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        if options.parent is not None:
            watchdog = asyncio.ensure_future(_orphaned(options.parent))
            watchdog.add_done_callback(lambda _: task.cancel())
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except Refused as exc:
        log.error("%s", exc)
        return 7
    except CivicError as exc:
        log.error("%s", exc)
        return 1
    log.info("citizen %s stopped", options.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    name = args.name or socket.gethostname()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s citizen {name}: %(message)s", datefmt="%H:%M:%S")
    try:
        p.parse_address(args.address)
        token = read_token(args.token_file)
    except CivicError as exc:
        parser.error(str(exc))
    fields = {f.name for f in dataclasses.fields(AgentOptions)}
    given = {key: value for key, value in vars(args).items() if key in fields}
    return run(AgentOptions(**{**given, "name": name, "home": args.home or default_home(name),
                               "prefetch": max(1, args.prefetch), "token": token}))


if __name__ == "__main__":
    sys.exit(main())
