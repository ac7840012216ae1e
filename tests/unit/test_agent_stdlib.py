"""The citizen agent must run in a bare Python: nothing pip-installed, only its own nine files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from civic.deploy.images import AGENT_FILES, package_root  # exactly what the citizen image ships

SRC = package_root()

# Isolated (-I: no PYTHON* variables, no cwd or user site on sys.path) and without site (-S:
# no site-packages, so nothing installed in the dev virtualenv is importable).
BARE = [sys.executable, "-I", "-S", "-c"]
PRELUDE = "import sys; sys.path.insert(0, '.'); "

CHECK_IMPORTS = PRELUDE + """
import civic.citizen.agent, civic, os
assert os.path.dirname(civic.__file__) == os.path.abspath('civic'), civic.__file__
offenders = sorted(
    name for name in sys.modules
    if name != '__main__' and name.partition('.')[0] not in sys.stdlib_module_names | {'civic'})
print('\\n'.join(offenders))
sys.exit(1 if offenders else 0)
"""


@pytest.fixture
def bare_copy(tmp_path: Path) -> Path:
    for name in AGENT_FILES:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SRC / name, target)
    return tmp_path


def run_bare(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BARE, code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def run_agent(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + "import runpy; runpy.run_module('civic.citizen.agent', run_name='__main__')"
    return run_bare(code, cwd, *args)


def test_agent_imports_with_only_its_own_files(bare_copy: Path) -> None:
    proc = run_bare(PRELUDE + "import civic.citizen.agent", bare_copy)
    assert proc.returncode == 0, proc.stderr


def test_agent_imports_nothing_outside_stdlib(bare_copy: Path) -> None:
    proc = run_bare(CHECK_IMPORTS, bare_copy)
    assert proc.returncode == 0, f"non-stdlib modules imported:\n{proc.stdout}{proc.stderr}"


def test_agent_help(bare_copy: Path) -> None:
    proc = run_agent(bare_copy, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "HOST:PORT" in proc.stdout


def test_agent_refuses_invalid_address(bare_copy: Path) -> None:
    proc = run_agent(bare_copy, "127.0.0.1:0", "--home", str(bare_copy / "home"))
    assert proc.returncode == 2
    assert "not a HOST:PORT address" in proc.stderr
    assert not (bare_copy / "home").exists()
