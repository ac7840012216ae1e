"""The agent pipelines: it asks for its next duty and sends its next result without waiting for
acks (a real Agent against a scripted server on 127.0.0.1; models replaced by a stub)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from civic import protocol as p
from civic.citizen import agent as agent_module
from civic.citizen.agent import Agent, AgentOptions

pytestmark = pytest.mark.timeout(60)


def duty(replica_id: int, timeout: float = 120.0, start_within: float | None = 60.0) -> p.Duty:
    return p.Duty([p.Assignment(replica_id, replica_id, "m", 1, "0" * 64, 0, "run", None,
                                timeout, [replica_id], start_within=start_within)])


class Peer:
    """The server's end of one connection; ``log`` records every frame both ways, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 log: list[str]) -> None:
        self.reader, self.writer, self.log = reader, writer, log

    async def recv(self) -> p.Message:
        """The next frame that is not a heartbeat (heartbeats are logged all the same)."""
        while True:
            message = await asyncio.wait_for(p.read_message(self.reader), 10)
            self.log.append(f"> {describe(message)}")
            if not isinstance(message, p.Heartbeat):
                return message

    async def send(self, message: p.Message) -> None:
        self.log.append(f"< {describe(message)}")
        await p.send(self.writer, message)

    async def welcome(self, *features: str) -> p.Hello:
        hello = await self.recv()
        assert isinstance(hello, p.Hello)
        await self.send(p.Welcome(p.PROTOCOL_VERSION, "c" * 32, heartbeat=60,
                                  features=list(features)))
        return hello


def describe(message: p.Message) -> str:
    if isinstance(message, (p.Result, p.Ack)):
        return f"{message.type} {message.replica_id}"
    if isinstance(message, p.Results):
        return "results " + ",".join(str(r.replica_id) for r in message.results)
    if isinstance(message, p.Acks):
        return "acks " + ",".join(str(a.replica_id) for a in message.acks)
    if isinstance(message, p.Duty):
        return "duty " + ",".join(str(a.replica_id) for a in message.assignments)
    if isinstance(message, p.Heartbeat):
        return f"heartbeat running={message.running}"
    return message.type


Script = Callable[[Peer], Awaitable[None]]


@pytest.fixture
def stub_models(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Models answer at once unless the returned event is cleared (then they wait for it)."""
    go = asyncio.Event()
    go.set()

    async def run_model(assignment: p.Assignment, *_: Any) -> p.Result:
        await go.wait()
        return p.Result(assignment.replica_id, 0, output=assignment.input)

    async def nothing(*_: Any) -> Any:
        return Path("/nonexistent"), None

    monkeypatch.setattr(agent_module, "run_model", run_model)
    monkeypatch.setattr(Agent, "_check_sandbox", nothing)
    monkeypatch.setattr(Agent, "_bundle", nothing)
    return go


def serve(tmp_path: Path, *scripts: Script, prefetch: int = 1) -> list[str]:
    """Run an agent against a server that plays one script per connection; returns the log."""
    log: list[str] = []
    done = asyncio.Event()

    async def main() -> None:
        queue = list(scripts)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not queue:  # done: the agent is being stopped
                writer.close()
                return
            log.append("connect")
            try:
                await queue.pop(0)(Peer(reader, writer, log))
            finally:
                writer.close()
                if not queue:
                    done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        agent = asyncio.create_task(Agent(AgentOptions(
            f"127.0.0.1:{port}", tmp_path / "home", "piper", prefetch=prefetch,
            backoff_base=0.05, backoff_cap=0.1)).run())
        try:
            await asyncio.wait_for(done.wait(), 30)
            assert not agent.done(), agent.result()
        finally:
            server.close()
            agent.cancel()
            await asyncio.wait({agent}, timeout=5)
            assert agent.cancelled(), "the agent did not stop when cancelled"

    asyncio.run(main())
    return log


def test_next_request_goes_out_before_the_result_is_acked(tmp_path: Path,
                                                          stub_models: asyncio.Event) -> None:
    """A server that acks a result only after the next request: a stop-and-wait agent would
    wait forever. The late ack, coming after a later duty frame, is taken too."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        assert isinstance(await peer.recv(), p.RequestDuty)
        await peer.send(duty(1))
        result = await peer.recv()
        assert isinstance(result, p.Result) and result.replica_id == 1
        assert isinstance(await peer.recv(), p.RequestDuty)  # not acked yet
        await peer.send(duty(2))
        await peer.send(p.Ack(1, True))
        assert isinstance(await peer.recv(), p.Result)
        await peer.send(p.Ack(2, True))
        assert isinstance(await peer.recv(), p.RequestDuty)
        await peer.send(p.Bye("done"))

    log = serve(tmp_path, script)
    frames = [entry for entry in log if "heartbeat" not in entry]
    assert frames == ["connect", "> hello", "< welcome", "> request-duty", "< duty 1",
                      "> result 1", "> request-duty", "< duty 2", "< ack 1", "> result 2",
                      "< ack 2", "> request-duty", "< bye"], log


@pytest.mark.parametrize("features, frame", [([p.BATCHES], "results 1"), ([], "result 1")])
def test_results_frame_only_to_a_server_offering_batches(tmp_path: Path,
                                                         stub_models: asyncio.Event,
                                                         features: list[str],
                                                         frame: str) -> None:
    async def script(peer: Peer) -> None:
        hello = await peer.welcome(*features)
        assert p.BATCHES in hello.features
        await peer.recv()
        await peer.send(duty(1))
        await peer.recv()
        await peer.send(p.Acks([p.Ack(1, True)]) if features else p.Ack(1, True))
        await peer.recv()
        await peer.send(p.Bye("done"))

    log = serve(tmp_path, script)
    assert f"> {frame}" in log, log


def test_unacked_results_are_sent_again_first_in_one_frame(tmp_path: Path,
                                                           stub_models: asyncio.Event) -> None:
    """Two results never acked; the server goes away. The next hello holds both and the first
    frame after the welcome carries both."""
    seen: list[p.Message] = []

    async def forgetful(peer: Peer) -> None:
        await peer.welcome(p.BATCHES)
        for replica_id in (1, 2):
            await peer.recv()
            await peer.send(duty(replica_id))
            await peer.recv()  # its result, never acked
        await peer.recv()  # the next request: go away without answering

    async def remembering(peer: Peer) -> None:
        seen.append(await peer.welcome(p.BATCHES))
        seen.append(await peer.recv())
        await peer.send(p.Acks([p.Ack(1, True), p.Ack(2, False, "too late")]))
        seen.append(await peer.recv())
        await peer.send(p.Bye("done"))

    log = serve(tmp_path, forgetful, remembering)
    hello, first, then = seen
    assert isinstance(hello, p.Hello) and hello.held == [1, 2], log
    assert isinstance(first, p.Results) and [r.replica_id for r in first.results] == [1, 2]
    assert isinstance(then, p.RequestDuty), log


@pytest.mark.parametrize("timeout, ahead", [(5.0, True), (60.0, False), (120.0, False)])
def test_prefetch_1_leases_one_ahead_only_when_the_model_ends_within_the_window(
        tmp_path: Path, stub_models: asyncio.Event, timeout: float, ahead: bool) -> None:
    """Once the model runs (its heartbeat says so), one more duty is asked for if the running
    model's timeout is shorter than the start window, and not otherwise."""
    stub_models.clear()  # the model runs until we say so

    async def script(peer: Peer) -> None:
        await peer.welcome(p.BATCHES)
        await peer.recv()
        await peer.send(duty(1, timeout=timeout))
        await asyncio.sleep(0.3)  # the model runs
        if ahead:
            request = await peer.recv()
            assert isinstance(request, p.RequestDuty) and request.count == 1
            await peer.send(duty(2))
        stub_models.set()
        following = await peer.recv()
        peer.log.append("model ended")
        assert isinstance(following, p.Results)
        await peer.send(p.Bye("done"))

    log = serve(tmp_path, script)
    running = log.index("> heartbeat running=[1]")
    before_result = log[running:log.index("model ended")]
    assert ("> request-duty" in before_result) is ahead, log


def test_a_larger_prefetch_keeps_that_many_here(tmp_path: Path,
                                                stub_models: asyncio.Event) -> None:
    """prefetch 3: asks for 3, and for the one missing while the first runs."""
    stub_models.clear()

    async def script(peer: Peer) -> None:
        await peer.welcome(p.BATCHES)
        request = await peer.recv()
        assert isinstance(request, p.RequestDuty) and request.count == 3
        await peer.send(p.Duty(duty(1).assignments + duty(2).assignments))
        request = await peer.recv()
        assert isinstance(request, p.RequestDuty) and request.count == 1
        await peer.send(p.NoWork(0.05))
        stub_models.set()
        while "> request-duty" not in peer.log[-1] or "> results 2" not in peer.log:
            await peer.recv()
        await peer.send(p.Bye("done"))

    log = serve(tmp_path, script, prefetch=3)
    assert log.index("> results 1") < log.index("> results 2"), log


def test_a_quiet_server_is_dead_only_when_it_owes_an_answer(tmp_path: Path,
                                                            stub_models: asyncio.Event,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Silent for 3 read timeouts while the model runs (nothing asked of it): fine. Silent
    for one while a duty request waits (a parked request that never ends): reconnect."""
    monkeypatch.setattr(agent_module, "READ_TIMEOUT", 0.5)
    stub_models.clear()

    async def quiet(peer: Peer) -> None:
        await peer.welcome(p.BATCHES)
        await peer.recv()
        await peer.send(duty(1))
        await asyncio.sleep(1.5)
        stub_models.set()
        await peer.recv()  # the result
        await peer.send(p.Acks([p.Ack(1, True)]))
        await peer.recv()  # a request, never answered
        with pytest.raises(p.ConnectionClosed):  # the agent hangs up
            await peer.recv()

    async def done(peer: Peer) -> None:
        await peer.welcome()
        await peer.send(p.Bye("done"))

    log = serve(tmp_path, quiet, done)
    assert log.count("connect") == 2 and "> results 1" in log, log
