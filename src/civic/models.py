"""Model manifests (``civic.yaml``) and deterministic bundles of a model's files."""

from __future__ import annotations

import difflib
import glob
import gzip
import hashlib
import math
import os
import re
import stat
import tarfile
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NoReturn

import yaml

from civic.errors import ManifestError

MANIFEST = "civic.yaml"
INPUT_FORMATS = ("csv", "json", "jsonl", "lines")
_KEYS = {"name", "version", "description", "files", "build", "run", "dataset", "input", "replication",
         "quorum", "max_replicas", "max_attempts", "timeout", "memory", "compare", "distinct",
         "platforms"}
DISTINCT = ("volunteer", "host", "citizen")  # whose results count once toward a quorum
_UNITS = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_MEMORY = re.compile(r"[1-9][0-9]*[bkmg]")
_REQUIRED: Any = object()


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-9`` (PyYAML alone wants ``1.0e-9``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; ``files`` are the bundle's resolved relative paths, sorted, with civic.yaml."""

    name: str
    version: str | None
    description: str
    files: tuple[str, ...]
    build: str | None
    run: str
    dataset: str | None
    input_format: str | None
    records_per_duty: int
    replication: int
    quorum: int
    max_replicas: int
    max_attempts: int
    timeout: float
    memory: str | None
    tolerance: float | None  # None means results must match exactly
    distinct: str = "host"  # results that count come from distinct volunteers, hosts or citizens
    platforms: tuple[str, ...] | None = None  # e.g. ("linux-x86_64",); None: any platform

    @property
    def memory_bytes(self) -> int | None:
        """The memory limit in bytes, or None without one."""
        return memory_bytes(self.memory)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (for PostgreSQL jsonb)."""
        platforms = None if self.platforms is None else list(self.platforms)
        return asdict(self) | {"files": list(self.files), "platforms": platforms}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Rebuild a manifest from :meth:`to_dict` output (keys added since default)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["files"] = tuple(data["files"])
        if values.get("platforms") is not None:
            values["platforms"] = tuple(values["platforms"])
        return cls(**values)


def memory_bytes(memory: str | None) -> int | None:
    """Bytes of a manifest memory limit like ``512m`` (None stays None)."""
    if memory is None:
        return None
    return int(memory[:-1]) * _UNITS[memory[-1]]


@dataclass(frozen=True)
class PackedBundle:
    """A packed bundle: ``path`` is a temporary .tar.gz file that the caller deletes."""

    sha256: str
    size: int
    path: Path


class _Section:
    """Typed access to one YAML mapping; every error names the file and the dotted key."""

    def __init__(self, path: Path, data: object, prefix: str, allowed: set[str]) -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            self.fail("", f"must be a mapping, not {type(data).__name__}")
        self.data: dict[Any, Any] = data
        for key in sorted(set(map(str, data)) - allowed):  # non-string YAML keys (1, true, null) are typos too
            hint = difflib.get_close_matches(key, allowed, n=1)
            self.fail(key, "unknown key" + (f"; did you mean '{hint[0]}'?" if hint else ""))

    def fail(self, key: str, message: str) -> NoReturn:
        raise ManifestError(self.path, message, key=(self.prefix + key).rstrip(".") or None)

    def check(self, ok: object, key: str, message: str) -> None:
        if not ok:
            self.fail(key, message)

    def get(self, key: str, types: type | tuple[type, ...], default: Any, what: str) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                self.fail(key, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, types):  # YAML 'yes' is not a number or text
            self.fail(key, f"must be {what}, got {value!r:.60}")
        return value

    def integer(self, key: str, default: Any, minimum: int = 1) -> int:
        value = self.get(key, int, default, "an integer")
        self.check(value >= minimum, key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any, positive: bool = False) -> float:
        value = self.get(key, (int, float), default, "a number")
        ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
        self.check(ok, key, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        return float(value)


def _parse_yaml(path: Path) -> tuple[object, str | None]:
    """Return the YAML document and the literal text of a scalar ``version`` (so 1.10 is not 1.1)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(path, "no such file; a model directory needs a civic.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, f"cannot read: {exc}") from None
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(path, f"invalid YAML{line}: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ManifestError(path, f"invalid YAML at line {line}: {exc.reason}") from None
    except Exception as exc:  # PyYAML lets ValueError (impossible dates) and RecursionError escape
        raise ManifestError(path, f"invalid YAML: {type(exc).__name__}: {exc}") from None
    version = None
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(value, yaml.ScalarNode) and getattr(key, "value", None) == "version":
                version = value.value
    return data, version


def _checked(root: Path, name: str, path: Path) -> Path:
    """Return the real path of bundle member ``name``, which must be a regular file inside ``root``."""
    pure = PurePosixPath(name)
    real = (root / pure).resolve()
    if pure.is_absolute() or ".." in pure.parts or not real.is_relative_to(root):
        raise ManifestError(path, f"{name!r} is not a path inside the model directory", key="files")
    if not real.is_file():
        raise ManifestError(path, f"{name!r} is not a regular file", key="files")
    return real


def _walk(root: Path, top: str) -> set[str]:
    """Files under ``root/top`` minus hidden names and __pycache__; symlinked directories are not followed."""
    found = set()
    for dirpath, dirs, files in os.walk(root / top):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        found |= {os.path.relpath(os.path.join(dirpath, f), root) for f in files if not f.startswith(".")}
    return found


def _bundle_files(root: Path, patterns: list[str] | None, path: Path) -> tuple[str, ...]:
    """Expand glob patterns (a matched directory brings its files) or, without patterns, walk ``root``."""
    names = {MANIFEST} | (_walk(root, ".") if patterns is None else set())
    for pattern in patterns or []:
        if PurePosixPath(pattern).is_absolute() or ".." in PurePosixPath(pattern).parts:
            raise ManifestError(path, f"pattern {pattern!r} must stay inside the model directory", key="files")
        found: set[str] = set()
        for match in glob.glob(pattern, root_dir=root, recursive=True):
            found |= _walk(root, match) if (root / match).is_dir() else {match}
        found = {m for m in found if "__pycache__" not in Path(m).parts}
        if not found:
            raise ManifestError(path, f"pattern {pattern!r} matches no files", key="files")
        names |= found
    names = {Path(name).as_posix() for name in names}
    for name in names:
        _checked(root, name, path)
    return tuple(sorted(names))


def load_manifest(model_dir: Path) -> Manifest:
    """Read and validate ``model_dir/civic.yaml``.

    Raises:
        ManifestError: naming the file and the (dotted) key, for any missing, unreadable or invalid input.
    """
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not model_dir.is_dir():
        raise ManifestError(model_dir, "model directory does not exist or is not a directory")
    data, version_text = _parse_yaml(path)
    top = _Section(path, data, "", _KEYS)
    name = top.get("name", str, _REQUIRED, "a string")
    top.check(_NAME.fullmatch(name), "name", f"{name!r} must be 1-63 of a-z 0-9 _ . - starting with a-z or 0-9")
    version = top.get("version", (str, int, float), None, "a string")
    run = top.get("run", str, _REQUIRED, "a shell command")
    missing = [p for p in ("{input}", "{output}") if p not in run]
    top.check(not missing, "run", f"must contain {' and '.join(missing)}")
    files = top.get("files", list, None, "a list of glob patterns")
    top.check(all(isinstance(p, str) and p for p in files or []), "files", "must hold non-empty glob strings")
    dataset = top.get("dataset", str, None, "a path")
    top.check(dataset is None or (model_dir / dataset).is_file(), "dataset", f"file {dataset!r} not found")
    inp = _Section(path, top.get("input", dict, {}, "a mapping"), "input.", {"format", "records_per_duty"})
    input_format = inp.get("format", str, None, "a string")
    inp.check(input_format in (None, *INPUT_FORMATS), "format", f"must be one of {', '.join(INPUT_FORMATS)}")
    replication = top.integer("replication", 1)
    quorum = top.integer("quorum", replication)
    top.check(quorum <= replication, "quorum", f"must be <= replication ({replication}), got {quorum}")
    memory = top.get("memory", str, None, "a string like 512m or 2g")
    memory = memory and memory.strip().lower()
    top.check(memory is None or _MEMORY.fullmatch(memory), "memory", f"must look like 512m or 2g, got {memory!r}")
    distinct = top.get("distinct", str, "host", "one of " + ", ".join(DISTINCT))
    top.check(distinct in DISTINCT, "distinct",
              f"must be one of {', '.join(DISTINCT)}, got {distinct!r:.60}")
    platforms = top.get("platforms", list, None, "a list of platforms like linux-x86_64")
    top.check(platforms is None or (platforms and all(
        isinstance(x, str) and x.strip() and " " not in x.strip() for x in platforms)),
              "platforms", "must be a non-empty list of platform names like linux-x86_64")
    compare = top.get("compare", (str, dict), "exact", "'exact' or a mapping like {tolerance: 1e-9}")
    top.check(isinstance(compare, dict) or compare == "exact", "compare", "must be 'exact' or {tolerance: ...}")
    try:
        bundle = _bundle_files(model_dir.resolve(), files, path)
    except (OSError, ValueError) as exc:  # e.g. a pattern that PyYAML decoded to a lone surrogate
        raise ManifestError(path, f"cannot list files: {exc}", key="files") from None
    return Manifest(
        name=name,
        version=version if version is None or isinstance(version, str) else version_text,
        description=top.get("description", str, "", "a string"),
        files=bundle,
        build=top.get("build", str, "", "a shell command").strip() or None,
        run=run,
        dataset=dataset,
        input_format=input_format,
        records_per_duty=inp.integer("records_per_duty", 1),
        replication=replication,
        quorum=quorum,
        max_replicas=top.integer("max_replicas", 2 * replication, minimum=replication),
        max_attempts=top.integer("max_attempts", 3),
        timeout=top.number("timeout", 600, positive=True),
        memory=memory,
        tolerance=(_Section(path, compare, "compare.", {"tolerance"}).number("tolerance", _REQUIRED)
                   if isinstance(compare, dict) else None),
        distinct=distinct,
        platforms=None if platforms is None else tuple(x.strip() for x in platforms),
    )


class _HashingWriter:
    """File-like sink that hashes and counts every byte on its way to ``raw``."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def pack_bundle(model_dir: Path, manifest: Manifest, dest_dir: Path | None = None) -> PackedBundle:
    """Pack the manifest's files into a deterministic .tar.gz, streaming and hashing as it writes.

    Every byte that could vary (mtimes, owners, umask, order, gzip header) is pinned, so the same
    files give the same sha256 whenever and wherever they are packed (with the same zlib).

    Raises:
        ManifestError: a file is missing, unreadable, not regular, or outside ``model_dir`` (key 'files').
    """
    root = Path(model_dir).resolve()
    fd, tmp = tempfile.mkstemp(prefix=f"{manifest.name}-", suffix=".tar.gz", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = _HashingWriter(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=6, mtime=0) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(set(manifest.files)):
                    real = _checked(root, name, root / MANIFEST)  # from_dict manifests were never checked
                    with real.open("rb") as src:
                        st = os.fstat(src.fileno())
                        info = tarfile.TarInfo(name)
                        info.size, info.mode = st.st_size, 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                        info.mtime = info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, src)  # copies in chunks
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ManifestError(root / MANIFEST, f"cannot pack bundle: {exc}", key="files") from exc
        raise
    return PackedBundle(sha256=out.digest.hexdigest(), size=out.size, path=Path(tmp))
