"""Tests for civic.models (manifest parsing, bundle packing) and civic.citizen.bundles (unpacking)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civic.citizen.bundles import sha256_file, unpack_bundle
from civic.errors import CivicError, ManifestError, ModelFailed
from civic.models import MANIFEST, Manifest, load_manifest, memory_bytes, pack_bundle

MINIMAL = "name: alphabet\nrun: ./alphabet {input} {output}\n"


def make_model(root: Path, manifest: str = MINIMAL) -> Path:
    """Write a small model directory with a source file, an executable, a dataset and noise to skip."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(manifest)
    (root / "alphabet.c").write_text("int main(void) { return 0; }\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "letters.csv").write_text("letter\na\nb\n")
    (root / ".git").mkdir(exist_ok=True)
    (root / ".git" / "HEAD").write_text("ref\n")
    (root / ".env").write_text("SECRET=1\n")
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "x.pyc").write_bytes(b"\0")
    return root


def archive_names(path: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()


def test_minimal_manifest_gets_defaults(tmp_path: Path) -> None:
    m = load_manifest(make_model(tmp_path / "m"))
    assert m == Manifest(
        name="alphabet", version=None, description="",
        files=("alphabet.c", "civic.yaml", "data/letters.csv", "run.sh"),
        build=None, run="./alphabet {input} {output}", dataset=None, input_format=None, records_per_duty=1,
        replication=1, quorum=1, max_replicas=2, max_attempts=3, timeout=600.0, memory=None, tolerance=None,
    )


def test_a_manifest_stored_before_distinct_and_platforms_still_loads(tmp_path: Path) -> None:
    m = load_manifest(make_model(tmp_path / "m"))
    old = {k: v for k, v in m.to_dict().items() if k not in ("distinct", "platforms")}
    assert Manifest.from_dict(old) == m
    assert (m.distinct, m.platforms, m.memory_bytes) == ("host", None, None)


@pytest.mark.parametrize(("text", "size"), [("1b", 1), ("2k", 2048), ("3m", 3 * 2**20),
                                            ("4g", 4 * 2**30), (None, None)])
def test_memory_bytes(text: str | None, size: int | None) -> None:
    assert memory_bytes(text) == size


def test_full_manifest(tmp_path: Path) -> None:
    text = """
name: alphabet
version: 1.10
description: Next letter
files: ["*.c", "data"]
build: cc -O2 -o alphabet alphabet.c
run: ./alphabet {input} {output}
dataset: data/letters.csv
input: {format: csv, records_per_duty: 5}
replication: 3
quorum: 2
max_attempts: 5
timeout: 1.5
memory: 512M
compare: {tolerance: 1e-9}
distinct: volunteer
platforms: [linux-x86_64, linux-aarch64]
"""
    m = load_manifest(make_model(tmp_path / "m", text))
    assert m.version == "1.10"  # the literal text, not the float 1.1
    assert m.files == ("alphabet.c", "civic.yaml", "data/letters.csv")
    assert (m.input_format, m.records_per_duty) == ("csv", 5)
    assert (m.replication, m.quorum, m.max_replicas, m.max_attempts) == (3, 2, 6, 5)
    assert (m.timeout, m.memory, m.tolerance) == (1.5, "512m", 1e-9)
    assert (m.memory_bytes, m.distinct, m.platforms) == (512 * 2**20, "volunteer",
                                                         ("linux-x86_64", "linux-aarch64"))
    assert Manifest.from_dict(m.to_dict()) == m
    assert yaml.safe_load(yaml.safe_dump(m.to_dict())) == m.to_dict()  # plain JSON-able types only


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("name: a\nrun: x {input} {output}\ntimeout: d: e\n", None, "line 3, column 11"),
        ("run: x {input} {output}\n", "name", "required"),
        ("name: a\n", "run", "required"),
        ("name: a\nrun: x {input}\n", "run", "{output}"),
        ("name: a\nrun: x {input} {output}\nreplicaton: 2\n", "replicaton", "did you mean 'replication'"),
        ("name: a\nrun: x {input} {output}\ninput: {format: csv, batch: 2}\n", "input.batch", "unknown"),
        ("name: a\nrun: x {input} {output}\ninput: {records_per_duty: 0}\n", "input.records_per_duty", ">= 1"),
        ("name: a\nrun: x {input} {output}\nreplication: 2\nquorum: 3\n", "quorum", "<= replication"),
        ("name: a\nrun: x {input} {output}\nreplication: 2\nmax_replicas: 1\n", "max_replicas", ">= 2"),
        ("name: a\nrun: x {input} {output}\nreplication: yes\n", "replication", "integer"),
        ("name: a\nrun: x {input} {output}\nmemory: lots\n", "memory", "512m"),
        ("name: a\nrun: x {input} {output}\ntimeout: 0\n", "timeout", "> 0"),
        ("name: a\nrun: x {input} {output}\ndistinct: planet\n", "distinct", "volunteer, host, citizen"),
        ("name: a\nrun: x {input} {output}\nplatforms: linux\n", "platforms", "a list"),
        ("name: a\nrun: x {input} {output}\nplatforms: []\n", "platforms", "non-empty"),
        ("name: a\nrun: x {input} {output}\nplatforms: [linux x86]\n", "platforms", "linux-x86_64"),
        ("name: a\nrun: x {input} {output}\ncompare: fuzzy\n", "compare", "exact"),
        ("name: a\nrun: x {input} {output}\ncompare: {tolerance: -1}\n", "compare.tolerance", ">= 0"),
        ("name: a\nrun: x {input} {output}\nfiles: ['*.rs']\n", "files", "matches no files"),
        ("name: a\nrun: x {input} {output}\nfiles: ['../*']\n", "files", "inside"),
        ("name: a\nrun: x {input} {output}\nfiles: ['/etc/passwd']\n", "files", "inside"),
        ("name: a\nrun: x {input} {output}\ndataset: nope.csv\n", "dataset", "not found"),
        ("name: Alphabet\nrun: x {input} {output}\n", "name", "a-z"),
        ("- just\n- a list\n", None, "mapping"),
        ("", None, "mapping"),
    ],
)
def test_bad_manifest(tmp_path: Path, text: str, key: str | None, fragment: str) -> None:
    model = make_model(tmp_path / "m", text)
    with pytest.raises(ManifestError) as info:
        load_manifest(model)
    message = str(info.value)
    assert str(model / MANIFEST) in message and fragment in message
    assert info.value.key == key
    if key:
        assert f"'{key}'" in message


def test_missing_dir_and_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match=f"{tmp_path / MANIFEST}: no such file"):
        load_manifest(tmp_path)


def test_symlink_outside_is_refused(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    (tmp_path / "secret").write_text("x")
    (model / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ManifestError, match="'link' is not a path inside") as info:
        load_manifest(model)
    assert info.value.key == "files"


def test_pack_is_deterministic(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    m = load_manifest(model)
    first = pack_bundle(model, m, tmp_path)
    for f in model.rglob("*"):
        os.utime(f, (1, 1))
    second = pack_bundle(model, m, tmp_path)
    assert first.sha256 == second.sha256 == sha256_file(first.path)
    assert first.size == first.path.stat().st_size
    assert first.path.read_bytes() == second.path.read_bytes()
    elsewhere = Path(shutil.copytree(model, tmp_path / "elsewhere" / "copy"))  # new path, inodes, mtimes
    assert pack_bundle(elsewhere, load_manifest(elsewhere), tmp_path).sha256 == first.sha256
    assert archive_names(first.path) == list(m.files)
    (model / "alphabet.c").write_text("int main(void) { return 1; }\n")
    assert pack_bundle(model, m, tmp_path).sha256 != first.sha256
    (model / "alphabet.c").write_text("int main(void) { return 0; }\n")
    (model / "alphabet.c").chmod(0o755)
    assert pack_bundle(model, m, tmp_path).sha256 != first.sha256


def test_pack_reports_vanished_file(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    m = load_manifest(model)
    (model / "run.sh").unlink()
    (tmp_path / "out").mkdir()
    with pytest.raises(ManifestError, match="'run.sh' is not a regular file"):
        pack_bundle(model, m, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # the temporary archive was removed


def test_pack_unpack_round_trip(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    bundle = pack_bundle(model, load_manifest(model), tmp_path)
    dest = tmp_path / "cache" / bundle.sha256
    unpack_bundle(bundle.path, dest, bundle.sha256)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == list(
        load_manifest(model).files
    )
    for name in ("alphabet.c", "run.sh", "data/letters.csv", MANIFEST):
        assert (dest / name).read_bytes() == (model / name).read_bytes()
    assert os.access(dest / "run.sh", os.X_OK) and not os.access(dest / "alphabet.c", os.X_OK)
    assert [p.name for p in dest.parent.iterdir()] == [bundle.sha256]  # no temporary leftovers
    unpack_bundle(bundle.path, dest, bundle.sha256)  # already there: kept as is


def test_unpack_rejects_wrong_sha(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    bundle = pack_bundle(model, load_manifest(model), tmp_path)
    with pytest.raises(ModelFailed, match="sha256 mismatch"):
        unpack_bundle(bundle.path, tmp_path / "dest", "0" * 64)
    assert not (tmp_path / "dest").exists()


def craft(path: Path, member: tarfile.TarInfo) -> str:
    """Write a gzip'd tar holding one good file then ``member``; return its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("good.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        if member.isreg():
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
        else:
            tar.addfile(member)
    return sha256_file(path)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil"),
        _member("/abs/evil"),
        _member("sub/../../evil"),
        _member("etc", tarfile.SYMTYPE, "/etc"),
        _member("up", tarfile.SYMTYPE, "../../.."),
        _member("hard", tarfile.LNKTYPE, "/etc/passwd"),
        _member("dev", tarfile.CHRTYPE),
    ],
    ids=lambda m: m.name,
)
def test_unpack_rejects_unsafe_members(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = tmp_path / "evil.tar.gz"
    sha = craft(archive, member)
    box = tmp_path / "box"
    with pytest.raises(ModelFailed, match="cannot unpack"):
        unpack_bundle(archive, box / "inner" / "dest", sha)
    assert list(box.rglob("*")) == [box / "inner"]  # nothing written, temporary dir removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "evil.tar.gz"]


def test_unpack_rejects_corrupt_archive(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ModelFailed, match="cannot unpack"):
        unpack_bundle(archive, tmp_path / "dest", sha256_file(archive))
    with pytest.raises(ModelFailed, match="cannot read"):
        unpack_bundle(tmp_path / "missing.tar.gz", tmp_path / "dest", "0" * 64)


_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_KEYS = ["name", "version", "description", "files", "build", "run", "dataset", "input", "replication", "quorum",
         "max_replicas", "max_attempts", "timeout", "memory", "compare", "format", "records_per_duty", "tolerance"]
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["x {input} {output}", "*", "**", "civic.yaml", "exact", "csv", "1g", "..", "/"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)


def _assert_loads_or_civic_error(model: Path, text: str) -> None:
    (model / MANIFEST).write_text(text, encoding="utf-8")
    try:
        assert isinstance(load_manifest(model), Manifest)
    except CivicError:
        pass


@_SETTINGS
@given(text=st.text())
def test_arbitrary_text_never_crashes(tmp_path: Path, text: str) -> None:
    _assert_loads_or_civic_error(tmp_path, text)


@_SETTINGS
@given(data=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=8))
def test_arbitrary_mappings_never_crash(tmp_path: Path, data: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _assert_loads_or_civic_error(make_model(Path(tmp) / "m"), yaml.safe_dump({"run": "x {input} {output}"} | data))
