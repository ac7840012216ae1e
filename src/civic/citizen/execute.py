"""Build and run a model on one duty, with time limits, on a citizen. Standard library only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import tempfile
import time
from pathlib import Path

from civic.errors import ModelFailed
from civic.protocol import Assignment, Result, parse_json

TAIL = 4096  # bytes of the model's console output kept for the researcher
MAX_OUTPUT = 8 * 1024 * 1024  # largest output file a citizen sends back
BUILD_TIMEOUT = 900.0
BUILT_MARKER = ".civic-built"


def model_env() -> dict[str, str]:
    """The environment a model sees: the citizen's, minus CIVIC's own settings and secrets."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CIVIC_")}


async def run_shell(command: str, cwd: Path, timeout: float) -> tuple[int | None, str]:
    """Run a shell command in its own process group; kill the whole group on timeout.

    Returns the exit code (None when it timed out) and the tail of its combined stdout/stderr.
    """
    proc = await asyncio.create_subprocess_shell(
        command, cwd=cwd, env=model_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    tail = bytearray()

    async def drain() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            tail.extend(chunk)
            del tail[:-TAIL]

    reader = asyncio.ensure_future(drain())
    code: int | None = None
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        pass
    finally:
        # Kill what is left of the group too: a model's stray children must not outlive the duty.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if code is None:
            await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(reader, 5)
        reader.cancel()
    return code, tail.decode("utf-8", "replace")


async def build(bundle_dir: Path, command: str | None) -> None:
    """Run the manifest's build command once per bundle (a marker file remembers success)."""
    marker = bundle_dir / BUILT_MARKER
    if not command or marker.exists():
        return
    code, tail = await run_shell(command, bundle_dir, BUILD_TIMEOUT)
    if code != 0:
        reason = "timed out" if code is None else f"exited with code {code}"
        raise ModelFailed(f"build failed: {command!r} {reason}", tail)
    marker.touch()


async def run_model(assignment: Assignment, bundle_dir: Path, work_root: Path) -> Result:
    """Run the model on one duty's input in a fresh work directory, removed afterwards."""
    work_root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"duty-{assignment.duty_id}-", dir=work_root))
    started = time.monotonic()
    try:
        input_path, output_path = workdir / "input.json", workdir / "output.json"
        input_path.write_text(json.dumps(assignment.input, ensure_ascii=False))
        command = (assignment.run.replace("{input}", shlex.quote(str(input_path)))
                   .replace("{output}", shlex.quote(str(output_path))))
        code, tail = await run_shell(command, bundle_dir, assignment.timeout)
        elapsed = time.monotonic() - started

        def failed(error: str) -> Result:
            return Result(assignment.replica_id, code, error=error, stderr_tail=tail,
                          elapsed=elapsed)

        if code is None:
            return failed(f"timed out after {assignment.timeout:g}s")
        if code != 0:
            return failed(f"exited with code {code}")
        if not output_path.is_file():
            return failed("wrote no output file")
        size = output_path.stat().st_size
        if size > MAX_OUTPUT:
            return failed(f"output is {size} bytes, above the {MAX_OUTPUT} byte limit")
        try:
            output = parse_json(output_path.read_bytes())
        except (ValueError, RecursionError) as exc:
            return failed(f"output is not valid JSON: {exc}")
        return Result(assignment.replica_id, 0, output=output, stderr_tail=tail, elapsed=elapsed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
