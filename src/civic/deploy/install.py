"""``civic server install`` and friends: the server and its PostgreSQL as Docker containers.

An installation is one network, one data volume, a PostgreSQL container, the server container
and optionally Adminer, all named and labelled after the CIVIC instance. Installing again
reports what exists and repairs what is missing; only ``uninstall --purge`` touches the data.
The database password is generated once and kept only in the config file (mode 0600).
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from civic.config import Settings, read_config, write_config
from civic.deploy import images
from civic.deploy.engine import (discard, ensure_image, errors, find, has_image,
                                 instance_of, labels, selector)
from civic.errors import AddressInUse, DockerError, NotFound, StoreError
from civic.protocol import DEFAULT_PORT
from civic.store import connect

DB_USER = DB_NAME = "civic"
WEB_PORT = DEFAULT_PORT + 2  # the dashboard's, as civic.web.app.DEFAULT_PORT (not imported here)
Step = Callable[[str], None]


@dataclass(frozen=True)
class InstallOptions:
    """How the installation is laid out."""

    port: int = DEFAULT_PORT
    bind: str = "0.0.0.0"
    network: str = "bridge"  # "bridge": a network of its own; "host": the host's network
    db_port: int = 24843  # PostgreSQL, published on 127.0.0.1 only
    server_image: str = images.SERVER_IMAGE
    postgres_image: str = images.POSTGRES_IMAGE
    with_adminer: bool = False
    adminer_image: str = "adminer"
    adminer_port: int = 8080
    web_host: str = "127.0.0.1"  # the dashboard and /metrics are published here...
    web_port: int = WEB_PORT  # ...on this port (0: not served)


class Installation:
    """The Docker objects of one CIVIC instance, and the config that remembers them."""

    def __init__(self, engine: Any, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self.instance = settings.instance
        self.names = {role: f"{self.instance}-{role}" for role in ("postgres", "server", "adminer")}
        self.volume = f"{self.instance}-pgdata"

    # -- config ---------------------------------------------------------------------------

    @staticmethod
    def has_installation(settings: Settings) -> bool:
        return "install" in read_config(settings.home)

    def saved(self) -> dict[str, Any] | None:
        """The install section of the config file, if this home has an installation."""
        return read_config(self.settings.home).get("install")

    def _save(self, options: InstallOptions, password: str) -> None:
        config = read_config(self.settings.home)
        config["instance"] = self.instance
        config["database_url"] = (f"postgresql://{DB_USER}:{password}@127.0.0.1:"
                                  f"{options.db_port}/{DB_NAME}")
        config["install"] = {**asdict(options), "password": password}
        write_config(self.settings.home, config)

    # -- install ----------------------------------------------------------------------------

    def install(self, options: InstallOptions, step: Step, build_server: Callable[[], None]
                ) -> None:
        """Create what is missing, start what is stopped; on failure remove what this run made."""
        saved = self.saved() or {}
        password = saved.get("password") or secrets.token_urlsafe(24)
        created: list[Any] = []
        try:
            self._ensure_image(options.server_image, step, build_server)
            self._ensure_image(options.postgres_image, step)
            self._check_ports(options)
            if options.network != "host":
                created += self._ensure(step, "network", self.instance, lambda: (
                    self.engine.networks.create(self.instance, driver="bridge",
                                                labels=labels(self.instance, "network"))))
            created += self._ensure(step, "volume", self.volume, lambda: (
                self.engine.volumes.create(self.volume, labels=labels(self.instance, "data"))))
            created += self._ensure(step, "container", self.names["postgres"],
                                    lambda: self._create_postgres(options, password))
            self._wait_for_database(options, password, step)
            self._save(options, password)
            created += self._ensure(step, "container", self.names["server"],
                                    lambda: self._create_server(options, password))
            if options.with_adminer:
                self._ensure_image(options.adminer_image, step)
                created += self._ensure(step, "container", self.names["adminer"],
                                        lambda: self._create_adminer(options))
        except BaseException:
            for thing in reversed(created):
                step(f"removing {thing.name}, created by this failed install")
                with errors(f"removing {thing.name}"):
                    discard(thing)
            raise

    def _check_ports(self, options: InstallOptions) -> None:
        """Fail before creating anything when a port a new container needs is taken."""
        wanted = [("postgres", "postgres", "127.0.0.1", options.db_port),
                  ("server", "server", options.bind, options.port)]
        if options.web_port:
            wanted.append(("server", "dashboard", options.web_host, options.web_port))
        if options.with_adminer:
            wanted.append(("adminer", "adminer", "127.0.0.1", options.adminer_port))
        for role, what, host, port in wanted:
            if find(self.engine, "container", self.names[role]) is not None:
                continue  # ours already: it holds the port itself
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                except OSError:
                    raise AddressInUse(f"port {port} on {host} is already in use ({what}); "
                                       "stop what holds it or choose another port") from None

    def _ensure_image(self, tag: str, step: Step, build: Callable[[], None] | None = None
                      ) -> None:
        if has_image(self.engine, tag):
            return
        if build is not None:
            step(f"building {tag}")
            build()
            return
        step(f"pulling {tag}")
        ensure_image(self.engine, tag, "pass a local image with --postgres-image / "
                                       "--server-image")

    def _ensure(self, step: Step, kind: str, name: str, create: Callable[[], Any]) -> list[Any]:
        """The object if it exists (started, for a container), else create it. Returns what
        was created now."""
        existing = find(self.engine, kind, name)
        if existing is not None and instance_of(existing) != self.instance:
            raise DockerError(f"a {kind} named {name} exists and is not this CIVIC instance's; "
                              "remove it, or choose another name with CIVIC_INSTANCE")
        if existing is None:
            with errors(f"creating {kind} {name}"):
                made = create()
            step(f"created {kind} {name}")
            return [made]
        if kind == "container" and existing.status != "running":
            with errors(f"starting {name}"):
                existing.start()
            step(f"started {kind} {name} (it existed, stopped)")
        else:
            step(f"{kind} {name} exists")
        return []

    def _placement(self, options: InstallOptions) -> dict[str, Any]:
        return ({"network_mode": "host"} if options.network == "host"
                else {"network": self.instance})

    def _create_postgres(self, options: InstallOptions, password: str) -> Any:
        host = options.network == "host"
        return self.engine.containers.run(
            options.postgres_image, ["postgres", "-c", "listen_addresses=" +
                                     ("127.0.0.1" if host else "*")],
            name=self.names["postgres"], detach=True, labels=labels(self.instance, "postgres"),
            environment={"POSTGRES_USER": DB_USER, "POSTGRES_PASSWORD": password,
                         "POSTGRES_DB": DB_NAME, "PGDATA": "/var/lib/postgresql/data/pgdata",
                         "PGPORT": str(options.db_port if host else 5432)},
            volumes={self.volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            restart_policy={"Name": "unless-stopped"},
            healthcheck={"test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", DB_USER],
                         "interval": 5_000_000_000, "timeout": 5_000_000_000, "retries": 5},
            ports={} if host else {"5432/tcp": ("127.0.0.1", options.db_port)},
            **self._placement(options))

    def _create_server(self, options: InstallOptions, password: str) -> Any:
        host = options.network == "host"
        db_host, db_port = ("127.0.0.1", options.db_port) if host else (self.names["postgres"], 5432)
        probe = "127.0.0.1" if options.bind in ("0.0.0.0", "::") else options.bind
        port = options.port if host else DEFAULT_PORT
        command = ["server", "run", "--host", options.bind if host else "0.0.0.0",
                   "--port", str(port)]
        ports = {} if host else {f"{DEFAULT_PORT}/tcp": (options.bind, options.port)}
        if options.web_port:  # the dashboard: on the host's address itself, or published there
            command += ["--web", f"{options.web_host}:{options.web_port}" if host
                        else f"0.0.0.0:{WEB_PORT}"]
            if not host:
                ports[f"{WEB_PORT}/tcp"] = (options.web_host, options.web_port)
        return self.engine.containers.run(
            options.server_image, command,
            name=self.names["server"], detach=True, labels=labels(self.instance, "server"),
            environment={"CIVIC_DATABASE_URL":
                         f"postgresql://{DB_USER}:{password}@{db_host}:{db_port}/{DB_NAME}"},
            restart_policy={"Name": "unless-stopped"},
            healthcheck={"test": ["CMD", "/opt/civic/bin/python", "-c",
                                  f"import socket; socket.create_connection(('{probe}', {port}), 3)"],
                         "interval": 10_000_000_000, "timeout": 5_000_000_000, "retries": 3},
            ports=ports,
            **self._placement(options))

    def _create_adminer(self, options: InstallOptions) -> Any:
        host = options.network == "host"
        return self.engine.containers.run(
            options.adminer_image, name=self.names["adminer"], detach=True,
            labels=labels(self.instance, "adminer"), restart_policy={"Name": "unless-stopped"},
            environment={"ADMINER_DEFAULT_SERVER": "127.0.0.1" if host else self.names["postgres"]},
            command=(["php", "-S", f"127.0.0.1:{options.adminer_port}", "-t",
                      "/var/www/html"] if host else None),
            ports={} if host else {"8080/tcp": ("127.0.0.1", options.adminer_port)},
            **self._placement(options))

    def _wait_for_database(self, options: InstallOptions, password: str, step: Step,
                           timeout: float = 90) -> None:
        url = f"postgresql://{DB_USER}:{password}@127.0.0.1:{options.db_port}/{DB_NAME}"
        step("waiting for PostgreSQL")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with connect(url, timeout=3):
                    return
            except StoreError as exc:
                if "password authentication failed" in str(exc):
                    raise StoreError("PostgreSQL refuses the password in the config file: the "
                                     f"data volume {self.volume} was made by another install; "
                                     "remove it with `civic server uninstall --purge`") from None
                if time.monotonic() > deadline:
                    raise StoreError(f"PostgreSQL did not answer on 127.0.0.1:{options.db_port} "
                                     f"within {timeout:.0f}s: {exc}") from None
                time.sleep(1)

    # -- running it ---------------------------------------------------------------------------

    def containers(self) -> list[Any]:
        """The instance's service containers (not its citizens), in start order."""
        with errors("listing containers"):
            found = {c.name: c for c in self.engine.containers.list(
                all=True, filters=selector(self.instance))}
        return [found[n] for n in self.names.values() if n in found]

    def require(self) -> list[Any]:
        found = self.containers()
        if not found:
            raise NotFound(f"no CIVIC server is installed for instance {self.instance!r}; "
                           "install one with: civic server install")
        return found

    def start(self) -> list[str]:
        started = []
        with errors("starting the server"):
            for c in self.require():
                c.start()
                started.append(c.name)
        return started

    def stop(self) -> list[str]:
        stopped = []
        with errors("stopping the server"):
            for c in reversed(self.require()):
                c.stop(timeout=40)  # the server drains for up to 30 s
                stopped.append(c.name)
        return stopped

    def logs(self, role: str, tail: int) -> str:
        container = find(self.engine, "container", self.names[role])
        if container is None:
            raise NotFound(f"no {self.names[role]} container; is the server installed?")
        with errors("reading logs"):
            return container.logs(tail=tail).decode("utf-8", "replace")

    def status(self) -> dict[str, Any]:
        """Containers with state and health, and whether the database answers."""
        rows = []
        for c in self.containers():
            health = c.attrs.get("State", {}).get("Health", {}).get("Status", "")
            rows.append({"name": c.name, "role": c.labels.get("civic.role"), "state": c.status,
                         "health": health,
                         "image": (c.image.tags or [c.image.short_id])[0] if c.image else ""})
        return {"instance": self.instance, "installed": bool(rows), "containers": rows,
                "dashboard": self.dashboard() if rows else None}

    def dashboard(self) -> str | None:
        """Where the installed server's dashboard answers (its /metrics beside it), if it
        serves one."""
        saved = self.saved() or {}
        host, port = saved.get("web_host", "127.0.0.1"), saved.get("web_port", 0)
        if not port:
            return None  # not asked for, or installed before the dashboard existed
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def uninstall(self, purge: bool, step: Step) -> None:
        """Remove containers and network; the data volume too only with ``purge``."""
        with errors("uninstalling"):
            for c in reversed(self.containers()):
                c.remove(force=True)
                step(f"removed container {c.name}")
            network = find(self.engine, "network", self.instance)
            if network is not None:
                network.remove()
                step(f"removed network {self.instance}")
            volume = find(self.engine, "volume", self.volume)
            if purge and volume is not None:
                volume.remove()
                step(f"removed volume {self.volume} (data deleted)")
            elif volume is not None:
                step(f"kept volume {self.volume} (the data); --purge removes it")
        config = read_config(self.settings.home)
        if purge:
            config.pop("install", None)
            config.pop("database_url", None)
            write_config(self.settings.home, config)

