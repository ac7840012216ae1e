"""Verify and unpack model bundles on a citizen. Standard library only: it runs in a bare container."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from civic.errors import ModelFailed

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checked(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Only plain files and directories with relative names inside the bundle, no special bits.

    Bundles packed by CIVIC hold nothing else, and this check works on every Python 3.11
    (Debian's 3.11.2 lacks tarfile's extraction filters).
    """
    for member in tar:
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"member {member.name!r} is not a regular file")
        if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
            raise tarfile.TarError(f"unsafe member name {member.name!r}")
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        yield member


def unpack_bundle(archive: Path, dest: Path, expected_sha256: str) -> None:
    """Verify ``archive`` against ``expected_sha256``, then extract it safely to ``dest``.

    Extraction goes to a temporary sibling of ``dest`` that is renamed into place, so ``dest`` is either
    absent or complete. If ``dest`` already exists (callers key it by sha256, so a concurrent unpack of
    the same bundle won the race) it is left as it is.

    Raises:
        ModelFailed: the archive is unreadable, does not match the sha256, or holds an unsafe or corrupt member.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        actual = sha256_file(archive)
    except OSError as exc:
        raise ModelFailed(f"bundle {archive}: cannot read: {exc}") from None
    if actual != expected_sha256.lower():
        raise ModelFailed(f"bundle {archive}: sha256 mismatch: expected {expected_sha256}, got {actual}")
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        with tarfile.open(archive, "r:gz") as tar:
            # The "data" filter, where Python has it, re-checks what _checked let through.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=_checked(tar), **extra)
        tmp.chmod(0o755)  # mkdtemp makes it 0o700; the sandbox may run the model as another user
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ModelFailed(f"bundle {archive}: cannot unpack into {dest}: {exc}") from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
