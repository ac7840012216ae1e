"""Tests for civic.citizen.execute: running real model commands in subprocesses on a citizen."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from civic.citizen import execute
from civic.citizen.execute import TAIL, run_model
from civic.protocol import Assignment, Result

INPUT = {"letters": ["a", "b", "é"], "n": 2.5, "nested": {"ok": True, "none": None}}
PY = shlex.quote(sys.executable)


def assignment(run: str, *, timeout: float = 30.0, input: Any = INPUT) -> Assignment:
    return Assignment(replica_id=7, duty_id=3, model="m", model_version=1, bundle_sha256="ab" * 32,
                      bundle_size=0, run=run, build=None, timeout=timeout, input=input)


def run(command: str, tmp_path: Path, **kwargs: Any) -> Result:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    return asyncio.run(run_model(assignment(command, **kwargs), bundle, tmp_path / "work"))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- success ----------------------------------------------------------------------------------


def test_copying_input_to_output_returns_the_input(tmp_path: Path) -> None:
    result = run("cp {input} {output}", tmp_path)
    assert result.exit_code == 0
    assert result.error is None
    assert result.output == INPUT
    assert result.replica_id == 7


def test_console_output_is_kept_on_success(tmp_path: Path) -> None:
    result = run("echo working; echo careful >&2; cp {input} {output}", tmp_path)
    assert "working" in result.stderr_tail and "careful" in result.stderr_tail


def test_model_runs_among_the_bundle_files(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "answer.json").write_text("42")
    assert run("cp answer.json {output}", tmp_path).output == 42


def test_paths_with_spaces_and_quotes_are_quoted(tmp_path: Path) -> None:
    root = tmp_path / "it's a dir"
    bundle = root / "my bundle"
    bundle.mkdir(parents=True)
    result = asyncio.run(run_model(assignment("cp {input} {output}"), bundle, root / "work root"))
    assert result.error is None
    assert result.output == INPUT


def test_model_does_not_see_civic_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVIC_TOKEN", "join-secret")
    monkeypatch.setenv("MODEL_SETTING", "kept")
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    result = run(f"{PY} -c {shlex.quote(dump)} {{output}}", tmp_path)
    assert result.error is None
    assert result.output["MODEL_SETTING"] == "kept"
    assert not [name for name in result.output if name.startswith("CIVIC_")]


# --- failures ---------------------------------------------------------------------------------


def test_non_zero_exit_names_the_code_and_keeps_the_tail(tmp_path: Path) -> None:
    result = run("echo 'segfault-ish trouble' >&2; exit 3", tmp_path)
    assert result.exit_code == 3
    assert result.error is not None and "code 3" in result.error
    assert "segfault-ish trouble" in result.stderr_tail
    assert result.output is None


def test_only_the_last_tail_bytes_are_kept(tmp_path: Path) -> None:
    noisy = "import sys; sys.stdout.write('START' + 'x' * 3 * TAIL + 'END'); sys.exit(1)"
    result = run(f"{PY} -c {shlex.quote(noisy.replace('TAIL', str(TAIL)))}", tmp_path)
    assert result.exit_code == 1
    assert len(result.stderr_tail) == TAIL
    assert result.stderr_tail.endswith("END")
    assert "START" not in result.stderr_tail


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = shlex.quote(str(tmp_path / "child.pid"))
    result = run(f"sleep 1000 & echo $! > {pid_file}; sleep 1000", tmp_path, timeout=0.5)
    assert result.exit_code is None
    assert result.error is not None and result.error.startswith("timed out")
    assert "0.5s" in result.error
    assert gone_within(int((tmp_path / "child.pid").read_text()), 5)


def test_stray_child_of_a_finished_model_is_killed(tmp_path: Path) -> None:
    pid_file = shlex.quote(str(tmp_path / "child.pid"))
    result = run(f"sleep 1000 > /dev/null 2>&1 & echo $! > {pid_file}; cp {{input}} {{output}}",
                 tmp_path)
    assert result.error is None
    assert gone_within(int((tmp_path / "child.pid").read_text()), 5)


def test_no_output_file(tmp_path: Path) -> None:
    result = run("true", tmp_path)
    assert result.exit_code == 0
    assert result.error == "wrote no output file"
    assert result.output is None


@pytest.mark.parametrize("content", ["{not json", "", "NaN", "[1, Infinity]", '{"x": -Infinity}'])
def test_output_that_is_not_json(tmp_path: Path, content: str) -> None:
    result = run(f"printf %s {shlex.quote(content)} > {{output}}", tmp_path)
    assert result.error is not None and "not valid JSON" in result.error
    assert result.output is None


def test_output_above_max_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "MAX_OUTPUT", 10)
    result = run("""printf '"%s"' aaaaaaaaaaaaaaaaaaaa > {output}""", tmp_path)
    assert result.error is not None and "10 byte limit" in result.error
    assert result.output is None


def test_output_at_max_output_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "MAX_OUTPUT", 10)
    assert run("""printf '"%s"' aaaaaaaa > {output}""", tmp_path).output == "aaaaaaaa"


@pytest.mark.parametrize("command, timeout", [
    ("cp {input} {output}", 30.0),
    ("exit 4", 30.0),
    ("sleep 1000", 0.3),
    ("true", 30.0),
    ("echo nope > {output}", 30.0),
])
def test_work_directory_is_removed(tmp_path: Path, command: str, timeout: float) -> None:
    run(command, tmp_path, timeout=timeout)
    assert list((tmp_path / "work").iterdir()) == []


