"""The duty sandbox on a citizen (civic.citizen.sandbox, the containment parts of execute and
bundles): real model commands in real subprocesses, as this user and, as root, as a model user."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from civic.citizen import sandbox as sandboxing
from civic.citizen.bundles import copy_tree, fingerprint
from civic.citizen.execute import build, run_model
from civic.citizen.sandbox import Sandbox, landlock_abi
from civic.errors import BundleChanged, ModelFailed
from civic.protocol import Assignment, Result

ROOT = os.geteuid() == 0
MODEL_UID = 2_000_000_000 + 4242  # a uid no account uses
PYTHON3 = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"

SANDBOXES = {"own-user": Sandbox()}
if ROOT:
    SANDBOXES["model-user"] = Sandbox(MODEL_UID)
if landlock_abi():
    SANDBOXES["landlock"] = Sandbox(None, landlock_abi())
    if ROOT:
        SANDBOXES["model-user+landlock"] = Sandbox(MODEL_UID, landlock_abi())


@pytest.fixture
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory a model user may traverse (pytest's own tmp directories may be private)."""
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="civic-unit-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This test process as a child subreaper (as the agent is), for the length of a test."""
    sandboxing.become_subreaper()
    try:
        yield
    finally:
        sandboxing._prctl(sandboxing.PR_SET_CHILD_SUBREAPER, 0)


def assignment(run: str, *, timeout: float = 30.0, memory: int | None = None,
               input: Any = None) -> Assignment:
    return Assignment(replica_id=7, duty_id=3, model="m", model_version=1,
                      bundle_sha256="ab" * 32, bundle_size=0, run=run, build=None,
                      timeout=timeout, input=[1, 2] if input is None else input, memory=memory)


def python_model(public: Path, body: str) -> Path:
    """A bundle holding model.py: ``body`` with RECORDS and OUT bound."""
    bundle = public / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "model.py").write_text("import json, os, sys\nRECORDS = json.load(open(sys.argv[1]))"
                                     "\nOUT = sys.argv[2]\n" + body)
    return bundle


def run(public: Path, sandbox: Sandbox, body: str, **kwargs: Any) -> Result:
    bundle = python_model(public, body)
    return asyncio.run(run_model(assignment(f"{PYTHON3} model.py {{input}} {{output}}",
                                            **kwargs), bundle, public / "work", sandbox))


@pytest.fixture(params=list(SANDBOXES))
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    return SANDBOXES[request.param]


# --- the duty's own directory -----------------------------------------------------------------

def test_a_duty_runs_in_a_fresh_copy_of_the_bundle_with_home_and_tmp_inside(
        public: Path, sandbox: Sandbox) -> None:
    result = run(public, sandbox, """
import tempfile
here = os.getcwd()
report = {"cwd": here, "files": sorted(n for n in os.listdir(".") if not n.startswith(".civic")),
          "home": os.environ["HOME"], "tmp": tempfile.gettempdir(), "uid": os.getuid(),
          "civic": [k for k in os.environ if k.startswith("CIVIC_")]}
open("scribble", "w").write("x")  # the model's own copy: may be written
open(os.path.join(os.environ["HOME"], "dotfile"), "w").write("x")
json.dump(report, open(OUT, "w"))
""")
    assert result.error is None, result
    out = result.output
    assert Path(out["cwd"]).parent == public / "work"
    assert out["files"] == ["model.py"]
    assert out["home"].startswith(out["cwd"] + "/") and out["tmp"].startswith(out["cwd"] + "/")
    assert out["uid"] == (sandbox.uid if sandbox.uid is not None else os.getuid())
    assert out["civic"] == []
    assert sorted(p.name for p in (public / "bundle").iterdir()) == ["model.py"]
    assert list((public / "work").iterdir()) == []


def test_a_bundle_changed_since_its_fingerprint_is_refused(public: Path) -> None:
    bundle = python_model(public, "json.dump(RECORDS, open(OUT, 'w'))\n")
    known = fingerprint(bundle)
    before = (bundle / "model.py").stat()
    (bundle / "model.py").write_text((bundle / "model.py").read_text().replace("RECORDS, ", "7, "))
    os.utime(bundle / "model.py", ns=(before.st_atime_ns, before.st_mtime_ns))  # a careful forger
    assert fingerprint(bundle) != known  # the ctime cannot be put back
    with pytest.raises(BundleChanged):
        asyncio.run(run_model(assignment(f"{PYTHON3} model.py {{input}} {{output}}"), bundle,
                              public / "work", Sandbox(), known))
    assert list((public / "work").iterdir()) == []


def test_an_unchanged_bundle_passes_its_fingerprint(public: Path) -> None:
    bundle = python_model(public, "json.dump(RECORDS, open(OUT, 'w'))\n")
    result = asyncio.run(run_model(assignment(f"{PYTHON3} model.py {{input}} {{output}}"),
                                   bundle, public / "work", Sandbox(), fingerprint(bundle)))
    assert result.output == [1, 2]


def test_copy_tree_refuses_a_fifo_and_keeps_links_as_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "run.sh").write_text("echo hi")
    (src / "sub" / "run.sh").chmod(0o4777)
    os.symlink("/etc/passwd", src / "link")
    copy_tree(src, tmp_path / "copy")
    assert os.readlink(tmp_path / "copy" / "link") == "/etc/passwd"
    assert (tmp_path / "copy" / "sub" / "run.sh").stat().st_mode & 0o7777 == 0o755
    os.mkfifo(src / "pipe")
    with pytest.raises(ModelFailed, match="not a regular file"):
        copy_tree(src, tmp_path / "again")


# --- what a model cannot touch ----------------------------------------------------------------

@pytest.mark.skipif(not landlock_abi(), reason="this kernel has no Landlock")
def test_with_landlock_a_model_writes_only_in_its_duty(public: Path) -> None:
    target = public / f"outside-{uuid.uuid4().hex[:8]}"
    result = run(public, Sandbox(None, landlock_abi()), f"""
tried = {{}}
for path in ({str(target)!r}, "/tmp/civic-unit-{uuid.uuid4().hex[:8]}", "/dev/null"):
    try:
        open(path, "w").close()
        tried[path] = "written"
    except OSError as exc:
        tried[path] = exc.strerror
json.dump(tried, open(OUT, "w"))
""")
    assert result.error is None, result
    assert list(result.output.values()) == ["Permission denied", "Permission denied", "written"]
    assert not target.exists()


@pytest.mark.skipif(not ROOT, reason="a model user of its own needs root")
def test_a_model_user_has_no_capabilities_and_no_new_privileges(public: Path) -> None:
    result = run(public, Sandbox(MODEL_UID), """
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
json.dump({k: status[k].strip() for k in ("Uid", "Gid", "CapEff", "CapPrm", "NoNewPrivs",
                                          "Groups")}, open(OUT, "w"))
""")
    assert result.error is None, result
    assert result.output["Uid"].split() == [str(MODEL_UID)] * 4
    assert result.output["CapEff"] == result.output["CapPrm"] == "0000000000000000"
    assert result.output["NoNewPrivs"] == "1" and result.output["Groups"] == ""


@pytest.mark.skipif(not ROOT, reason="a model user of its own needs root")
def test_the_output_is_never_read_through_a_link(public: Path) -> None:
    secret = public / "secret"
    secret.write_text('"root only"')
    secret.chmod(0o600)
    result = run(public, Sandbox(MODEL_UID), f"os.symlink({str(secret)!r}, OUT)\n")
    assert result.output is None and "not a regular file" in (result.error or "")


def test_a_fifo_as_output_is_refused_without_waiting(public: Path) -> None:
    result = run(public, Sandbox(), "os.mkfifo(OUT)\n", timeout=20)
    assert result.output is None and "not a regular file" in (result.error or "")


def test_hide_process_closes_environ_to_the_same_user(tmp_path: Path) -> None:
    user = {"user": 65534, "group": 65534, "extra_groups": []} if ROOT else {}
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
            "from civic.citizen.sandbox import hide_process; assert hide_process(); "
            "print('hidden', flush=True); time.sleep(60)")
    src = str(Path(sandboxing.__file__).parents[2])
    hidden = subprocess.Popen([PYTHON3, "-c", code, src], stdout=subprocess.PIPE, text=True,
                              env={"SECRET_TOKEN": "s3cret", "PATH": "/usr/bin:/bin"}, **user)
    try:
        assert hidden.stdout is not None and hidden.stdout.readline().strip() == "hidden"
        peek = f"print(open('/proc/{hidden.pid}/environ').read())"
        reader = subprocess.run([PYTHON3, "-c", peek], capture_output=True, text=True, **user)
        assert reader.returncode != 0 and "Permission denied" in reader.stderr
        assert "s3cret" not in reader.stdout
    finally:
        hidden.kill()
        hidden.wait()


# --- processes --------------------------------------------------------------------------------

def alive_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes() and \
                        (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_no_process_of_a_duty_survives_it(public: Path, sandbox: Sandbox, subreaper: None
                                          ) -> None:
    marker = f"civicunit{uuid.uuid4().hex[:10]}"
    try:
        result = run(public, sandbox, f"""
import shutil, subprocess
sleep = shutil.which("sleep")
subprocess.Popen([{marker!r} + "-setsid", "1000"], executable=sleep, start_new_session=True)
subprocess.Popen([{marker!r} + "-child", "1000"], executable=sleep)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sleep, [{marker!r} + "-double", "1000"])
    os._exit(0)
os.wait()
json.dump(RECORDS, open(OUT, "w"))
""", timeout=20)
        assert result.error is None, result  # the children hold stdout: no timeout for that
        assert alive_with(marker) == []
    finally:
        for pid in alive_with(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_timed_out_model_and_its_escapees_are_killed(public: Path, sandbox: Sandbox,
                                                       subreaper: None) -> None:
    marker = f"civicunit{uuid.uuid4().hex[:10]}"
    try:
        result = run(public, sandbox, f"""
import shutil, subprocess, time
subprocess.Popen([{marker!r}, "1000"], executable=shutil.which("sleep"),
                 start_new_session=True, stdout=subprocess.DEVNULL)
time.sleep(1000)
""", timeout=1)
        assert result.exit_code is None and result.error == "timed out after 1s"
        assert alive_with(marker) == []
    finally:
        for pid in alive_with(marker):
            os.kill(pid, signal.SIGKILL)


def test_other_children_of_the_agent_are_spared(public: Path, subreaper: None) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert run(public, Sandbox(), "json.dump(1, open(OUT, 'w'))\n").output == 1
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# --- memory -----------------------------------------------------------------------------------

def test_the_memory_limit_stops_a_hog_and_the_error_names_it(public: Path, sandbox: Sandbox
                                                             ) -> None:
    result = run(public, sandbox, """
hog = bytearray(2 << 30)
for i in range(0, len(hog), 4096):
    hog[i] = 1
json.dump(len(hog), open(OUT, "w"))
""", memory=256 << 20, timeout=60)
    assert result.output is None, "a 2 GiB model ran under a 256 MiB limit"
    assert "MemoryError" in result.stderr_tail
    assert result.error is not None and "out of memory" in result.error
    assert "256 MiB" in result.error


def test_a_model_within_its_memory_limit_runs(public: Path, sandbox: Sandbox) -> None:
    result = run(public, sandbox, "data = bytearray(64 << 20)\n"
                                  "json.dump(len(data), open(OUT, 'w'))\n", memory=256 << 20)
    assert result.output == 64 << 20


# --- builds -----------------------------------------------------------------------------------

def tree(public: Path) -> Path:
    path = public / "holder" / "bundle"
    path.mkdir(parents=True)
    (path / "src.txt").write_text("source")
    return path


def test_a_build_writes_its_outputs_into_its_tree(public: Path, sandbox: Sandbox) -> None:
    built = tree(public)
    asyncio.run(build(built, "cp src.txt out.txt && mkdir -p bin && echo x > bin/tool "
                             "&& echo cached > \"$HOME/cache\"", sandbox))
    assert (built / "out.txt").read_text() == "source"
    assert sorted(p.name for p in built.iterdir()) == ["bin", "out.txt", "src.txt"]
    assert all(p.stat().st_uid == os.geteuid() for p in built.rglob("*"))  # the agent's again


def test_a_failing_build_raises_with_its_tail(public: Path, sandbox: Sandbox) -> None:
    with pytest.raises(ModelFailed, match="code 2") as info:
        asyncio.run(build(tree(public), "echo 'missing compiler' >&2; exit 2", sandbox))
    assert "missing compiler" in info.value.stderr_tail


@pytest.mark.skipif(not ROOT, reason="a model user of its own needs root")
def test_a_build_cannot_smuggle_in_a_foreign_file(public: Path) -> None:
    foreign = public / "foreign"
    foreign.write_text("someone else's")
    foreign.chmod(0o666)  # linkable by the model user even with protected_hardlinks
    with pytest.raises(ModelFailed, match="not its own"):
        asyncio.run(build(tree(public), f"ln {shlex.quote(str(foreign))} stolen",
                          Sandbox(MODEL_UID)))


def test_agent_sendable_turns_unencodable_outputs_into_errors() -> None:
    from civic.citizen.agent import _sendable
    ok = Result(1, 0, output=[1])
    assert _sendable(ok) is ok
    for output, reason in ((["\ud800"], "surrogates"), ([float("inf")], "Out of range"),
                           (["x" * (17 << 20)], "exceeds")):
        bad = _sendable(Result(1, 0, output=output, stderr_tail="tail", elapsed=2.0))
        assert bad.output is None and bad.error is not None, bad
        assert bad.error.startswith("output cannot be sent:") and reason in bad.error, bad.error
        assert (bad.stderr_tail, bad.elapsed) == ("tail", 2.0)


@pytest.mark.skipif(not (ROOT and sandboxing._can_mount()),
                    reason="needs root with CAP_SYS_ADMIN")
def test_models_with_users_of_their_own_get_a_dev_shm_of_their_own(public: Path) -> None:
    name = f"civic-unit-{uuid.uuid4().hex[:8]}"
    body = f"""
import time
open("/dev/shm/{name}-" + str(os.getpid()), "w").write("x")
time.sleep(0.5)  # both run at once
json.dump(sorted(n for n in os.listdir("/dev/shm") if n.startswith("{name}")), open(OUT, "w"))
"""
    bundle = python_model(public, body)

    async def both() -> list[Result]:
        command = assignment(f"{PYTHON3} model.py {{input}} {{output}}")
        return await asyncio.gather(*(
            run_model(command, bundle, public / "work", Sandbox(uid, landlock_abi()))
            for uid in (MODEL_UID, MODEL_UID + 1)))

    results = asyncio.run(both())
    assert [len(r.output or []) for r in results] == [1, 1], results  # each sees its own only
    assert [n for n in os.listdir("/dev/shm") if n.startswith(name)] == []


def test_check_sandbox_runs_a_process_the_way_models_run(public: Path, sandbox: Sandbox) -> None:
    from civic.citizen.execute import check_sandbox
    scratch = public / "probe"
    scratch.mkdir()
    asyncio.run(check_sandbox(scratch, sandbox))


def test_the_host_key_comes_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from civic.citizen.agent import host_key
    monkeypatch.delenv("CIVIC_HOST_KEY", raising=False)
    derived = host_key()
    assert derived and derived == host_key()
    monkeypatch.setenv("CIVIC_HOST_KEY", "rack-7")
    assert host_key() == "rack-7"


def test_the_token_can_come_on_stdin() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from civic.citizen.agent import read_token; print(repr(read_token(Path('-'))))")
    src = str(Path(sandboxing.__file__).parents[2])
    done = subprocess.run([sys.executable, "-c", code, src], input="s3cret-token\n",
                          capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert done.stdout.strip() == "'s3cret-token'", done.stderr
