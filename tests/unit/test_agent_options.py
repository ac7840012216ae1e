"""The agent's options are defined once: what the runtimes write is what the agent reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from civic.citizen.options import OPTIONS, AgentOptions, build_parser, to_argv
from civic.citizen.runtimes import Joining

# Not on the command line: the token never is (ps shows it); the backoff is the agent's own.
NOT_ON_THE_COMMAND_LINE = {"token", "backoff_base", "backoff_cap"}
SAMPLES = {"address": "server.example:24842", "name": "c-1", "home": Path("/h"), "prefetch": 7,
           "work": Path("/w"), "token_file": Path("-"), "tls": True, "ca": Path("/ca.pem"),
           "parent": 42, "host": "k3y", "memory": 1 << 30, "model_user": 10001,
           "landlock": False, "verbose": True}


def parse(argv: list[str]) -> dict[str, object]:
    return vars(build_parser("test").parse_args(argv))


def test_every_option_survives_the_command_line() -> None:
    assert set(SAMPLES) == {option.field for option in OPTIONS}
    assert parse(to_argv(**SAMPLES)) == SAMPLES


def test_absent_options_take_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIVIC_HOST_KEY", raising=False)
    assert to_argv(address="a:1", prefetch=1, tls=False, landlock=True, memory=0) == ["a:1"]
    parsed = parse(["a:1"])
    for field in dataclasses.fields(AgentOptions):
        if field.name in parsed and field.default is not dataclasses.MISSING:
            assert parsed[field.name] == field.default, field.name


def test_host_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVIC_HOST_KEY", "from-env")
    assert parse(["a:1"])["host"] == "from-env"
    assert parse(["a:1", "--host-key", "flag"])["host"] == "flag"


def test_every_agent_option_has_an_argument() -> None:
    fields = {f.name for f in dataclasses.fields(AgentOptions)}
    assert fields - NOT_ON_THE_COMMAND_LINE <= {option.field for option in OPTIONS}


def test_the_token_has_no_argument() -> None:
    with pytest.raises(TypeError, match="token"):
        to_argv(address="a:1", token="secret")


def test_runtime_arguments_parse_back() -> None:
    joining = Joining("a:1", prefetch=4, token="secret", ca=Path("/here/ca.pem"))
    argv = joining.agent_args("c-2", "/etc/civic/ca.pem", home=Path("/h"), token_file="-")
    assert "secret" not in argv
    parsed = parse(argv)
    assert (parsed["address"], parsed["name"], parsed["prefetch"], parsed["ca"], parsed["home"],
            parsed["token_file"]) == ("a:1", "c-2", 4, Path("/etc/civic/ca.pem"), Path("/h"),
                                      Path("-"))
