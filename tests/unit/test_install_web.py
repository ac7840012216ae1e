"""The installed server's dashboard: how its container is asked to serve and publish it.

The Docker test (tests/docker/test_lab.py) fetches /metrics from a real installation; these
check the container specification for both networks where no engine answers."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from civic.config import Settings
from civic.deploy.install import WEB_PORT, Installation, InstallOptions
from civic.errors import AddressInUse
from civic.web.app import DEFAULT_PORT


class _Containers:
    def __init__(self) -> None:
        self.runs: list[tuple[Any, dict[str, Any]]] = []

    def get(self, name: str) -> Any:
        raise NotFound(name)

    def run(self, image: str, command: Any = None, **kwargs: Any) -> dict[str, Any]:
        self.runs.append((command, kwargs))
        return kwargs


class _Engine:
    def __init__(self) -> None:
        self.containers = _Containers()
        self.volumes = self.networks = None


def _server(tmp_path: Path, **options: Any) -> tuple[list[str], dict[str, Any]]:
    engine = _Engine()
    Installation(engine, Settings(home=tmp_path))._create_server(InstallOptions(**options), "pw")
    ((command, kwargs),) = engine.containers.runs
    return command, kwargs


def test_the_web_port_is_the_dashboards_default() -> None:
    assert WEB_PORT == DEFAULT_PORT


def test_a_bridged_server_serves_the_dashboard_inside_and_publishes_it_on_loopback(
        tmp_path: Path) -> None:
    command, kwargs = _server(tmp_path)
    assert command[command.index("--web") + 1] == f"0.0.0.0:{WEB_PORT}"
    assert kwargs["ports"][f"{WEB_PORT}/tcp"] == ("127.0.0.1", WEB_PORT)

    command, kwargs = _server(tmp_path, web_host="0.0.0.0", web_port=8844)
    assert command[command.index("--web") + 1] == f"0.0.0.0:{WEB_PORT}"
    assert kwargs["ports"][f"{WEB_PORT}/tcp"] == ("0.0.0.0", 8844)


def test_a_server_on_the_host_network_listens_where_asked(tmp_path: Path) -> None:
    command, kwargs = _server(tmp_path, network="host", web_host="127.0.0.1", web_port=8844)
    assert command[command.index("--web") + 1] == "127.0.0.1:8844"
    assert kwargs["ports"] == {} and kwargs["network_mode"] == "host"


def test_no_dashboard_when_asked_for_none(tmp_path: Path) -> None:
    command, kwargs = _server(tmp_path, web_port=0)
    assert "--web" not in command and list(kwargs["ports"]) == ["24842/tcp"]


def test_a_taken_web_port_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        installation = Installation(_Engine(), Settings(home=tmp_path))
        with pytest.raises(AddressInUse, match=f"port {port} on 127.0.0.1 .*dashboard"):
            installation._check_ports(InstallOptions(port=0, db_port=0, web_port=port))
