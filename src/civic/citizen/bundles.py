"""Verify and unpack model bundles on a citizen. Standard library only: it runs in a bare container."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
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


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # The 'data' filter silently strips a leading '/' and allows 'a/../b'; a packed bundle never has either.
    if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
        raise tarfile.FilterError(f"unsafe member name {member.name!r}")
    return tarfile.data_filter(member, dest)  # refuses links leaving dest, devices, setuid bits


def unpack_bundle(archive: Path, dest: Path, expected_sha256: str) -> None:
    """Verify ``archive`` against ``expected_sha256``, then extract it safely to ``dest``.

    Extraction goes to a temporary sibling of ``dest`` that is renamed into place, so ``dest`` is either
    absent or complete. If ``dest`` already exists (callers key it by sha256, so a concurrent unpack of
    the same bundle won the race) it is left as it is.

    Raises:
        ModelFailed: the archive is unreadable, does not match the sha256, or holds an unsafe or corrupt member.
    """
    archive, dest = Path(archive), Path(dest)
    if not hasattr(tarfile, "data_filter"):
        raise ModelFailed("unpacking bundles safely needs Python 3.11.4 or later")
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
            tar.extractall(tmp, filter=_member_filter)
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
