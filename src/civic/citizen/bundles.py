"""Verify, unpack, copy and fingerprint model bundles on a citizen. Standard library only: it
runs in a bare container."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from civic.errors import ModelFailed

_CHUNK = 1 << 20

# What a tree looked like: (path, mode, size, device, inode, mtime_ns, ctime_ns) of every entry.
# No process but root can set a ctime, so a tree that matches was not touched since.
Fingerprint = tuple[tuple[str, int, int, int, int, int, int], ...]


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


def fingerprint(root: Path) -> Fingerprint:
    """What ``root`` and everything under it look like now (symbolic links are not followed).

    Raises:
        OSError: part of the tree cannot be read.
    """
    entries = []

    def add(path: str) -> os.stat_result:
        info = os.lstat(path)
        entries.append((os.path.relpath(path, root), info.st_mode, info.st_size, info.st_dev,
                        info.st_ino, info.st_mtime_ns, info.st_ctime_ns))
        return info

    def walk(directory: str) -> None:
        with os.scandir(directory) as listing:
            names = sorted(entry.name for entry in listing)
        for name in names:
            path = os.path.join(directory, name)
            if stat.S_ISDIR(add(path).st_mode):
                walk(path)

    add(str(root))
    walk(str(root))
    return tuple(entries)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a bundle tree into ``dst`` (which may exist): directories, regular files and
    symbolic links (as links), with plain modes (0755 or 0644, never set-id bits); the copies
    belong to the caller.

    Raises:
        ModelFailed: the tree holds anything else (a FIFO, a socket, a device).
        OSError: it cannot be read or written.
    """
    dst.mkdir(mode=0o755, exist_ok=True)
    with os.scandir(src) as listing:
        entries = list(listing)
    for entry in entries:
        target = dst / entry.name
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(entry.path), target)
        elif stat.S_ISDIR(info.st_mode):
            copy_tree(Path(entry.path), target)
        elif stat.S_ISREG(info.st_mode):
            # O_NONBLOCK: were it swapped for a FIFO meanwhile, open must not wait for a writer
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as source:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ModelFailed(f"{entry.path} is not a regular file any more")
                mode = 0o755 if info.st_mode & 0o111 else 0o644
                with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                  mode), "wb") as copy:
                    shutil.copyfileobj(source, copy, _CHUNK)
            os.chmod(target, mode)  # whatever the umask
        else:
            raise ModelFailed(f"{entry.path} is not a regular file, directory or symbolic link")
    os.chmod(dst, 0o755)
