"""Datasets from shell pipelines, and the same file imported twice."""

from __future__ import annotations

import subprocess

import pytest
from civic_cli import ALPHABET, CIVIC, Civic

pytestmark = pytest.mark.e2e

LETTERS = ALPHABET / "letters.csv"


def piped(civic: Civic, *args: str, data: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CIVIC, *args], input=data.decode(), env=civic.env, text=True,
                          capture_output=True, timeout=120)


def test_a_pipeline_feeds_a_dataset_through_dash_or_dev_stdin(civic: Civic) -> None:
    assert civic("model", "add", str(ALPHABET)).returncode == 0
    done = piped(civic, "dataset", "import", "alphabet", "-", data=LETTERS.read_bytes())
    assert done.returncode == 0, done.stderr
    assert "26 records from <stdin> (csv)" in done.stdout  # the manifest's format
    jsonl = b'{"letter": "q"}\n{"letter": "z"}\n'
    done = piped(civic, "dataset", "import", "alphabet", "/dev/stdin", "--format", "jsonl",
                 "--json", data=jsonl)
    assert done.returncode == 0, done.stderr
    assert '"records": 2' in done.stdout


def test_importing_the_same_bytes_again_is_refused_with_the_dataset_id(civic: Civic) -> None:
    assert civic("model", "add", str(ALPHABET)).returncode == 0
    first = civic.json("dataset", "import", "alphabet", str(LETTERS))
    again = civic("dataset", "import", "alphabet", str(LETTERS))
    assert again.returncode == 2
    assert f"same bytes as dataset {first['id']} of alphabet" in again.stderr
    assert "--again" in again.stderr and "Traceback" not in again.stderr
    assert len(civic.json("dataset", "list")) == 1  # nothing imported
    piped_again = piped(civic, "dataset", "import", "alphabet", "-", data=LETTERS.read_bytes())
    assert piped_again.returncode == 2, piped_again.stderr  # through a pipe too
    assert civic("dataset", "import", "alphabet", str(LETTERS), "--again").returncode == 0
    assert len(civic.json("dataset", "list")) == 2
