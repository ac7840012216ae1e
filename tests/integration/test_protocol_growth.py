"""The protocol can grow: a newer server talks to this agent, and a refused version is final."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from test_server import running_server

from civic import protocol as p
from civic.store import catalog

pytestmark = pytest.mark.integration


def _agent(address: str, home, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "civic.citizen.agent", address,
                             "--home", str(home), "--name", home.name],
                            env={"CIVIC_TOKEN": token, "PATH": "/usr/bin:/bin",
                                 "ALPHABET_BURN_SECONDS": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_newer_server_with_extra_fields_works_with_this_agent(alphabet, database_url, tmp_path,
                                                                monkeypatch, h):
    """Every frame the server sends carries fields this agent has never heard of."""
    original = p.encode

    def newer(message: p.Message, max_frame: int = p.MAX_FRAME) -> bytes:
        body = json.loads(original(message, max_frame)[p.HEADER.size:])
        body["from_the_future"] = {"priority": 3}
        for assignment in body.get("assignments", []):
            assignment["gpu"] = "a field of protocol 3"
        data = json.dumps(body).encode()
        return p.HEADER.pack(len(data)) + data

    monkeypatch.setattr(p, "encode", newer)  # the in-process server's frames only

    async def scenario() -> dict[str, int]:
        async with running_server(database_url) as server:
            host, port = server.address
            token = await asyncio.to_thread(catalog.join_token, database_url)
            agents = [_agent(f"{host}:{port}", tmp_path / f"old-{i}", token) for i in (1, 2)]
            try:
                for _ in range(600):
                    progress = await asyncio.to_thread(catalog.progress, database_url,
                                                       alphabet.id)
                    if progress["pending"] == 0:
                        return progress
                    assert all(a.poll() is None for a in agents), agents[0].stdout.read()
                    await asyncio.sleep(0.2)
                raise AssertionError(f"not finished: {progress}")
            finally:
                for agent in agents:
                    agent.terminate()
                    agent.wait(10)

    h.execute(database_url, "UPDATE datasets SET distinct_by = 'citizen'")
    assert asyncio.run(scenario())["done"] == 26


def test_a_citizen_whose_version_is_refused_exits_at_once_saying_why(alphabet, database_url,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setattr(p, "SUPPORTED_VERSIONS", (p.PROTOCOL_VERSION + 1,))  # a newer server

    async def scenario() -> tuple[int, str, float]:
        async with running_server(database_url) as server:
            host, port = server.address
            token = await asyncio.to_thread(catalog.join_token, database_url)
            started = time.monotonic()
            agent = _agent(f"{host}:{port}", tmp_path / "old", token)
            code = await asyncio.to_thread(agent.wait, 30)
            return code, agent.stdout.read(), time.monotonic() - started

    code, log, elapsed = asyncio.run(scenario())
    assert code == 7, log
    assert f"speaks protocol version {p.PROTOCOL_VERSION}" in log  # the citizen's version
    assert f"this server speaks protocol version {p.PROTOCOL_VERSION + 1}" in log  # the server's
    assert "retrying" not in log  # refused for good: no reconnect loop
