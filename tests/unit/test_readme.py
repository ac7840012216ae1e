"""The README's two commands are the ones CI runs, and they name things that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "the README opens with a sh block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_main_job_and_the_tests() -> None:
    job, tests = readme_commands()
    assert "civic run examples/alphabet" in job
    assert tests.endswith("pytest")


def test_ci_runs_the_readme_commands() -> None:
    job, tests = readme_commands()
    install = job.split(" && civic run")[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci, "CI installs the project the way the README does"
    assert tests in ci, "CI runs the README's test command"
