"""What keeps a model in its place on a citizen. Standard library only (Linux; elsewhere the
pieces that need it do nothing).

- The agent hides itself: non-dumpable (its ``/proc/PID/environ``, ``mem`` and ptrace are closed
  to processes of its own uid) and a child subreaper (whatever a model double-forks stays the
  agent's descendant, so it can be found and killed).
- A model runs as a user of its own when the agent is root, in a session of its own, with no new
  privileges, a memory limit (RLIMIT_DATA), the first pick of the out-of-memory killer, and, where
  the kernel has Landlock, writes only inside its duty directory (plus /dev/shm and device files),
  no ptrace and no signals outside its own processes.
- After each duty every process it started is killed and reaped, and (when it has a uid of its
  own) every file it left in /tmp, /var/tmp and /dev/shm is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import resource
import shutil
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from itertools import count
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("civic.citizen")

# + 32 * the agent's pid (+ n): uids no account uses (systemd leaves 1879048192-2147352575 free)
MODEL_UID_BASE = 2_000_000_000
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable: swept after a model's duty

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
CAP_SYS_ADMIN = 21

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# Landlock (linux/landlock.h): the syscalls have these numbers on every architecture.
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
RULE_PATH_BENEATH = 1
FS_WRITE_FILE = 1 << 1
FS_WRITES_V1 = FS_WRITE_FILE | sum(1 << bit for bit in range(4, 13))  # remove, make *
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

_agents = count()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _prctl(option: int, value: int) -> bool:
    libc = _libc()
    return libc is not None and libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) == 0


def hide_process() -> bool:
    """Make this process non-dumpable: processes of the same uid can no longer read its
    ``/proc/PID/environ`` or memory, nor ptrace it. Returns whether that worked."""
    return _prctl(PR_SET_DUMPABLE, 0)


def become_subreaper() -> bool:
    """Orphans among this process's descendants become its children, not init's."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


@functools.cache
def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none)."""
    libc = _libc()
    if libc is None:
        return 0
    version = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, version)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _writes(abi: int) -> int:
    return FS_WRITES_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)


def _ruleset(abi: int, writable: Path) -> int:
    """A Landlock ruleset (fd) allowing writes only beneath ``writable`` and to existing
    device files (/dev/shm is added in the child, which may mount its own); with ABI 6,
    signals and abstract sockets only within the domain."""
    libc = _libc()
    assert libc is not None
    attr = _RulesetAttr(_writes(abi), 0,
                        SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0)
    size = 24 if abi >= 6 else 8  # older kernels refuse fields they do not know
    fd = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                      ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        _allow(fd, str(writable), _writes(abi))
        _allow(fd, "/dev", FS_WRITE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _allow(ruleset: int, path: str, access: int) -> None:
    """Add a rule to a Landlock ruleset: ``access`` beneath ``path`` (if it exists)."""
    libc = _libc()
    assert libc is not None
    try:
        beneath = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        rule = _PathBeneath(access, beneath)
        if libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
    finally:
        os.close(beneath)


@functools.cache
def _can_mount() -> bool:
    """Whether this process may make mount namespaces (root with CAP_SYS_ADMIN)."""
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        return bool(int(caps.split()[1], 16) >> CAP_SYS_ADMIN & 1) and os.path.isdir("/dev/shm")
    except (OSError, StopIteration, ValueError):
        return False


def _private_shm(memory: int | None) -> None:
    """In a forked child: a mount namespace of its own with an empty tmpfs on /dev/shm."""
    libc = _libc()
    assert libc is not None
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None,
                                                    ctypes.c_ulong(MS_REC | MS_PRIVATE), None):
        raise OSError(ctypes.get_errno(), "cannot make a mount namespace")
    options = b"mode=1777" + (f",size={memory}".encode() if memory else b"")
    if libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV),
                  options):
        raise OSError(ctypes.get_errno(), "cannot mount a tmpfs on /dev/shm")


@dataclass(frozen=True)
class Sandbox:
    """How this citizen confines its models.

    ``uid``: the user models run as, when it differs from the agent's (the agent is root);
    None: models run as the agent's own user. ``landlock``: the Landlock ABI used to confine
    their writes (0: none).
    """

    uid: int | None = None
    landlock: int = 0

    @classmethod
    def for_agent(cls, model_user: int | None = None, landlock: bool = True) -> Sandbox:
        """The strongest confinement this process can give: a uid of the models' own when it
        runs as root (``model_user``, or one derived from its pid), Landlock when the kernel
        has it."""
        uid = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # One uid per agent, even for several agents in one process (tests do that).
            uid = model_user if model_user is not None else (
                MODEL_UID_BASE + (os.getpid() << 5) + next(_agents) % 32)
        return cls(uid, landlock_abi() if landlock else 0)

    def describe(self) -> str:
        who = (f"models run as uid {self.uid}" if self.uid is not None
               else "models run as this citizen's own user")
        if self.uid is not None and _can_mount():
            who += ", each with a /dev/shm of its own"
        writes = (f"their writes are confined to their duty directory (Landlock ABI "
                  f"{self.landlock})" if self.landlock else
                  "their writes are not confined (no Landlock)")
        return f"{who}; {writes}"

    # -- files ------------------------------------------------------------------------------

    def give(self, path: Path) -> None:
        """Hand a tree the agent made to the model's user (nothing to do without one)."""
        if self.uid is None:
            return

        def fail(error: OSError) -> None:
            raise error

        # Bottom up: without CAP_DAC_READ_SEARCH the agent cannot list what it gave away.
        for directory, dirs, files in os.walk(path, topdown=False, onerror=fail):
            for name in dirs + files:
                os.lchown(os.path.join(directory, name), self.uid, self.uid)
        os.lchown(path, self.uid, self.uid)

    def reclaim(self, path: Path, strict: bool = False) -> None:
        """Take back a tree a model used, top down, so the agent can read and remove it with
        no more capabilities than CAP_CHOWN (a model may have left its directories 0000).

        Raises:
            PermissionError: with ``strict`` and a model user of its own, an entry does not
                belong to that user (a hard link to someone else's file, say).
        """
        me = os.geteuid()
        info = os.lstat(path)
        if strict and self.uid is not None and info.st_uid != self.uid:
            raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to the model")
        if info.st_uid != me:
            os.lchown(path, me, os.getegid())
        if stat.S_ISDIR(info.st_mode):
            os.chmod(path, 0o700)
            with os.scandir(path) as entries:
                for entry in entries:
                    self.reclaim(Path(entry.path), strict)

    def remove(self, path: Path) -> None:
        """Remove a tree a model used, whatever modes or owners it left in it."""
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            with contextlib.suppress(OSError):
                self.reclaim(path)
            shutil.rmtree(path, ignore_errors=True)

    def sweep_files(self) -> int:
        """Remove what the model's own user left in the world-writable directories; returns
        how many entries. (Without a uid of its own nothing tells a model's files apart.)"""
        if self.uid is None:
            return 0
        removed = 0
        for top in SHARED_DIRS:
            with contextlib.suppress(OSError), os.scandir(top) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_uid == self.uid:
                            if entry.is_dir(follow_symlinks=False):
                                self.remove(Path(entry.path))
                            else:
                                os.unlink(entry.path)
                            removed += 1
        return removed

    # -- processes --------------------------------------------------------------------------

    def prepare(self, writable: Path, memory: int | None
                ) -> tuple[Callable[[], None], tuple[int, ...]]:
        """What a model's child process runs before exec (it ends in ``writable``, its working
        directory: entered as the model's user, which the agent may not be able to), and the
        file descriptors it needs.

        Runs in the forked child, so it only makes system calls: the memory limit, the
        out-of-memory score, a /dev/shm of its own (when the agent may mount), the model's uid,
        no new privileges, a parent-death signal, and the Landlock ruleset built here.
        """
        ruleset = _ruleset(self.landlock, writable) if self.landlock else -1
        uid, abi = self.uid, self.landlock
        private_shm = uid is not None and _can_mount()

        def in_child() -> None:
            if memory:
                resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
            with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")  # the container's OOM killer takes the model, not the agent
            if private_shm:
                _private_shm(memory)
            if ruleset >= 0:
                _allow(ruleset, "/dev/shm", _writes(abi))
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
            os.chdir(writable)
            if not _prctl(PR_SET_NO_NEW_PRIVS, 1):
                raise OSError("cannot set no_new_privs")
            if ruleset >= 0:
                libc = _libc()
                assert libc is not None
                if libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)):
                    raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
                os.close(ruleset)

        return in_child, (() if ruleset < 0 else (ruleset,))

    async def sweep(self, spared: set[int], group: int | None = None) -> int:
        """Kill and reap what a duty left until nothing is left; returns how many processes.

        First the model's process group; then, with a uid of the models' own, every process of
        that uid; without one, every child of this process (orphans come here: the agent is a
        subreaper) not in ``spared`` (children from before the duty, and the models of other
        duties running in this process, see :func:`running`).
        """
        if group is not None:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        me, killed = os.getpid(), set()
        spared = spared | _running
        for _ in range(500):
            if self.uid is None:
                found = [(pid, not _zombie(pid)) for pid in _children(me)]
            else:  # this process's zombies of that uid it reaps; the others' parents will die
                found = [(pid, not zombie) for pid, ppid, uid, zombie in _processes()
                         if uid == self.uid and (ppid == me or not zombie)]
            found = [(pid, live) for pid, live in found if pid not in spared]
            if not found:
                return len(killed)
            for pid, live in found:
                if live:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # ours only: a child, or not waitable at all
            await asyncio.sleep(0.005)
        log.warning("processes of a duty are still there after 500 rounds of SIGKILL")
        return len(killed)


# The main processes of the models running in this process now: never another duty's to sweep.
_running: set[int] = set()


@contextlib.contextmanager
def running(pid: int) -> Iterator[None]:
    """Mark ``pid`` as the main process of a model running now (see :meth:`Sandbox.sweep`)."""
    _running.add(pid)
    try:
        yield
    finally:
        _running.discard(pid)


def children() -> set[int]:
    """This process's children now."""
    return _children(os.getpid())


def _children(me: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children", "rb") as f:
                found.update(int(pid) for pid in f.read().split())
        return found
    except OSError:  # a kernel without /proc/PID/task/TID/children
        return {pid for pid, ppid, _, _ in _processes() if ppid == me}


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True  # gone already: nothing to kill, maybe something to reap


def _processes() -> list[tuple[int, int, int, bool]]:
    """(pid, parent pid, real uid, zombie) of every process this one can see."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
            state = status[status.index(b"\nState:") + 7:].lstrip()[:1]
            ppid = int(status[status.index(b"\nPPid:") + 6:].split(None, 1)[0])
            uid = int(status[status.index(b"\nUid:") + 5:].split(None, 1)[0])
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(name), ppid, uid, state == b"Z"))
    return found
