"""Build and run a model on one duty, contained, with time and memory limits, on a citizen.
Standard library only.

Every run (a build or a duty) gets a fresh directory of its own: its working directory, holding
the bundle's files, with a private corner for HOME, TMPDIR and the duty's input and output.
The directory is removed afterwards, and so is every process the run started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from civic.citizen.bundles import Fingerprint, copy_tree, fingerprint
from civic.citizen.sandbox import Sandbox, children, running
from civic.errors import BundleChanged, ModelFailed
from civic.protocol import Assignment, Result, parse_json, size_text

TAIL = 4096  # bytes of the model's console output kept for the researcher
MAX_OUTPUT = 8 * 1024 * 1024  # largest output file a citizen sends back
BUILD_TIMEOUT = 900.0
AFTER_EXIT = 1.0  # seconds to wait for the last output once the model and its children are gone
# What runtimes print when an allocation fails (with RLIMIT_DATA, an allocation just fails).
OUT_OF_MEMORY = ("memoryerror", "cannot allocate memory", "out of memory", "bad_alloc",
                 "memory exhausted", "failed to allocate", "outofmemoryerror")


def model_env(home: Path, tmp: Path) -> dict[str, str]:
    """The environment a model sees: the citizen's, minus CIVIC's own settings and secrets,
    with HOME and TMPDIR in its own directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVIC_")}
    env.update(HOME=str(home), TMPDIR=str(tmp), TMP=str(tmp), TEMP=str(tmp))
    return env


def _corner(root: Path) -> Path:
    """A private corner of a run's directory for HOME, TMPDIR, input and output; made after the
    bundle's files are in, so its name cannot be one of theirs."""
    corner = Path(tempfile.mkdtemp(prefix=".civic-", dir=root))
    (corner / "home").mkdir()
    (corner / "tmp").mkdir()
    corner.chmod(0o755)
    return corner


async def run_shell(command: str, root: Path, corner: Path, timeout: float,
                    sandbox: Sandbox, memory: int | None = None) -> tuple[int | None, str]:
    """Run a shell command in ``root``, contained by ``sandbox``, in a session of its own.

    When the command's own process exits (or ``timeout`` passes) every process it started is
    killed, so a child that keeps stdout open delays nothing. Returns the exit code (negative:
    killed by that signal; None: timed out) and the tail of its combined stdout/stderr.
    """
    spared = children()
    try:
        in_child, fds = sandbox.prepare(root, memory)
    except OSError as exc:
        raise ModelFailed(f"cannot set up the sandbox: {exc}") from None
    try:
        proc = subprocess.Popen(
            command, shell=True, env=model_env(corner / "home", corner / "tmp"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=in_child, pass_fds=fds)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelFailed(f"cannot start {command!r} in its sandbox: {exc}") from None
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.stdout is not None
    tail = bytearray()
    drained = _drain(proc.stdout, tail)
    code: int | None = None
    with running(proc.pid):
        try:
            code = await asyncio.wait_for(_exited(proc), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            pass
        finally:
            if code is None:  # its children become ours once it is gone: then sweep them
                with contextlib.suppress(OSError):
                    proc.kill()
                await _exited(proc)
            await sandbox.sweep(spared | {proc.pid}, proc.pid)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(drained), AFTER_EXIT)
            drained.cancel()
            proc.stdout.close()
    return code, tail.decode("utf-8", "replace")


def _drain(pipe: object, tail: bytearray) -> asyncio.Future[None]:
    """Keep the last TAIL bytes read from ``pipe`` until it closes (the returned future)."""
    loop = asyncio.get_running_loop()
    fd = pipe.fileno()  # type: ignore[attr-defined]
    os.set_blocking(fd, False)
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            tail.extend(chunk)
            del tail[:-TAIL]
            return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    done.add_done_callback(lambda _: loop.remove_reader(fd))
    return done


async def _exited(proc: subprocess.Popen[bytes]) -> int:
    """The exit status of ``proc`` once it exits (a pidfd where the kernel has them)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        while proc.poll() is None:
            await asyncio.sleep(0.02)
        return proc.returncode
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()


async def check_sandbox(scratch: Path, sandbox: Sandbox) -> None:
    """Run ``true`` in ``scratch`` the way a model runs.

    Raises:
        ModelFailed: the sandbox cannot start a process here, or it failed.
    """
    corner = _corner(scratch)
    sandbox.give(scratch)
    code, tail = await run_shell("true", scratch, corner, 30, sandbox, 1 << 30)
    if code != 0:
        raise ModelFailed(f"a model's `true` {_ended(code)}: {tail.strip()}")


async def build(tree: Path, command: str, sandbox: Sandbox) -> None:
    """Run the manifest's build command in ``tree`` (a fresh copy of the bundle), contained
    like a duty; afterwards the tree is the agent's again, ready to be sealed into the cache.

    Raises:
        ModelFailed: the build failed, timed out, or left a file that is not its own.
    """
    corner = _corner(tree)
    sandbox.give(tree)
    code, tail = await run_shell(command, tree, corner, BUILD_TIMEOUT, sandbox)
    try:
        sandbox.reclaim(tree, strict=True)
    except PermissionError as exc:
        raise ModelFailed(f"build left a file that is not its own: {exc}", tail) from None
    sandbox.remove(corner)
    if code != 0:
        raise ModelFailed(f"build failed: {command!r} {_ended(code)}", tail)


async def run_model(assignment: Assignment, bundle_dir: Path, work_root: Path,
                    sandbox: Sandbox | None = None, expected: Fingerprint | None = None
                    ) -> Result:
    """Run the model on one duty's input in a fresh directory holding a copy of the bundle,
    removed afterwards.

    Raises:
        BundleChanged: ``bundle_dir`` no longer matches ``expected`` (checked after copying).
    """
    sandbox = sandbox or Sandbox()
    work_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"duty-{assignment.duty_id}-", dir=work_root))
    started = time.monotonic()
    corner_fd = -1
    try:
        copy_tree(bundle_dir, root)
        if expected is not None and fingerprint(bundle_dir) != expected:
            raise BundleChanged(f"bundle {assignment.bundle_sha256[:12]} changed on disk "
                                "since it was checked")
        root.chmod(0o700)
        corner = _corner(root)
        input_path, output_path = corner / "input.json", corner / "output.json"
        input_path.write_text(json.dumps(assignment.input, ensure_ascii=False))
        corner_fd = os.open(corner, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        command = (assignment.run.replace("{input}", shlex.quote(str(input_path)))
                   .replace("{output}", shlex.quote(str(output_path))))
        sandbox.give(root)
        code, tail = await run_shell(command, root, corner, assignment.timeout, sandbox,
                                     assignment.memory)
        elapsed = time.monotonic() - started

        def failed(error: str) -> Result:
            return Result(assignment.replica_id, code, error=error, stderr_tail=tail,
                          elapsed=elapsed)

        if code is None:
            return failed(f"timed out after {assignment.timeout:g}s")
        if code != 0:
            return failed(_ended(code, tail, assignment.memory))
        try:
            data = _read_output(corner_fd, sandbox)
        except ModelFailed as exc:
            return failed(str(exc))
        try:
            output = parse_json(data)
        except (ValueError, RecursionError) as exc:
            return failed(f"output is not valid JSON: {exc}")
        return Result(assignment.replica_id, 0, output=output, stderr_tail=tail, elapsed=elapsed)
    except OSError as exc:
        raise ModelFailed(f"cannot prepare the duty's directory: {exc}") from None
    finally:
        if corner_fd >= 0:
            os.close(corner_fd)
        sandbox.remove(root)
        sandbox.sweep_files()


def _read_output(corner: int, sandbox: Sandbox) -> bytes:
    """The output file, read through the corner's directory descriptor (taken before the model
    ran, so a renamed or swapped directory changes nothing) and never through a link, a FIFO or
    a file that is not the model's own."""
    name = "output.json"
    if sandbox.uid is not None:  # take the corner back first: the model may have closed it
        os.fchown(corner, os.geteuid(), os.getegid())
        os.fchmod(corner, 0o700)
    try:
        info = os.stat(name, dir_fd=corner, follow_symlinks=False)
    except FileNotFoundError:
        raise ModelFailed("wrote no output file") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelFailed("the output is not a regular file")
    if sandbox.uid is not None and info.st_uid != sandbox.uid:
        raise ModelFailed("the output file is not the model's own")
    if info.st_size > MAX_OUTPUT:
        raise ModelFailed(f"output is {info.st_size} bytes, above the {MAX_OUTPUT} byte limit")
    if sandbox.uid is not None:
        os.chown(name, os.geteuid(), os.getegid(), dir_fd=corner, follow_symlinks=False)
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=corner)
    with open(fd, "rb") as f:
        if os.fstat(fd).st_ino != info.st_ino:
            raise ModelFailed("the output file changed while it was read")
        data = f.read(MAX_OUTPUT + 1)
    if len(data) > MAX_OUTPUT:
        raise ModelFailed(f"output is above the {MAX_OUTPUT} byte limit")
    return data


def _ended(code: int | None, tail: str = "", memory: int | None = None) -> str:
    """How a run ended, for its error: naming the memory limit when it looks like the cause."""
    if code is None:
        return "timed out"
    how = (f"exited with code {code}" if code >= 0
           else f"was killed by signal {-code} ({signal.Signals(-code).name})"
           if -code in signal.valid_signals() else f"was killed by signal {-code}")
    text = tail.lower()
    if memory and (any(sign in text for sign in OUT_OF_MEMORY)
                   or -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)):
        how += f", out of memory: its limit is {size_text(memory)} (the manifest's memory)"
    return how
