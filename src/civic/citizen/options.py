"""The citizen agent's options, defined once: what an agent needs, and its command line.

The agent's argparse parser (``build_parser``) and the argument lists the runtimes build to start an
agent (``to_argv``) are both generated from ``OPTIONS``, so adding an option is one field of
``AgentOptions`` and one ``Option`` here (plus a typer flag in ``civic.cli.citizens`` if
volunteers set it themselves). Standard library only: the agent imports it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AgentOptions:
    """What one citizen needs to know."""

    address: str
    home: Path
    name: str
    prefetch: int = 1
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    token: str | None = None
    work: Path | None = None  # per-duty scratch directories (default: HOME/work)
    tls: bool = False  # speak TLS, checking the server against ``ca`` or the system's roots
    ca: Path | None = None  # implies TLS
    parent: int | None = None  # exit when this process is gone (citizens spawned as processes)
    host: str = ""  # key shared by the citizens of one machine (default: from its machine id)
    memory: int = 0  # bytes a model may use here (default: the machine's physical memory)
    model_user: int | None = None  # uid models run as when the agent is root (default: its own)
    landlock: bool = True  # confine models' writes with Landlock where the kernel has it


@dataclass(frozen=True)
class Option:
    """One argument of the agent's command line.

    Attributes:
        flag: ``--name`` as typed; a bare word is the positional argument.
        field: the value it sets: an ``AgentOptions`` field, or one ``main()`` reads itself.
        help: one line for ``--help``.
        type: converts the text; None for a switch, which sets ``field`` to ``not default``.
        default: the value when the argument is absent (a switch's value when off).
        env: the environment variable read when the argument is absent.
        metavar: how ``--help`` names the value.
        short: a one-letter alias (``-v``).
    """

    flag: str
    field: str
    help: str
    type: Callable[[str], Any] | None = str
    default: Any = None
    env: str | None = None
    metavar: str | None = None
    short: str | None = None

    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.positional:
            parser.add_argument(self.field, metavar=self.metavar, help=self.help)
            return
        flags = [self.flag, *([self.short] if self.short else [])]
        default = os.environ.get(self.env, self.default) if self.env else self.default
        if self.type is None:
            parser.add_argument(*flags, dest=self.field, help=self.help, default=default,
                                action="store_false" if default else "store_true")
        else:
            parser.add_argument(*flags, dest=self.field, help=self.help, default=default,
                                type=self.type, metavar=self.metavar)

    def argv(self, value: Any) -> list[str]:
        """This argument carrying ``value`` (nothing when ``value`` is what its absence means)."""
        if value is None or value == self.default:
            return []
        if self.positional:
            return [str(value)]
        return [self.flag] if self.type is None else [self.flag, str(value)]


OPTIONS = (
    Option("address", "address", "the CIVIC server to work for", metavar="HOST:PORT"),
    Option("--name", "name", "name shown on the server (default: this host's name)"),
    Option("--home", "home", "identity, bundle cache and work directory", Path),
    Option("--prefetch", "prefetch", "duties to lease at a time", int, 1),
    Option("--work", "work", "scratch directory (default: HOME/work)", Path),
    Option("--token-file", "token_file",
           "file holding the join token, - for stdin (default: $CIVIC_TOKEN)", Path),
    Option("--tls", "tls", "connect with TLS", None, False),
    Option("--ca", "ca", "CA file to check the server's certificate (default: the system's "
                         "roots)", Path),
    Option("--parent", "parent", "stop when this process id is gone", int),
    Option("--host-key", "host", "key shared by the citizens of one machine (default: from its "
                                 "machine id; $CIVIC_HOST_KEY)", str, "", env="CIVIC_HOST_KEY",
           metavar="KEY"),
    Option("--memory", "memory", "bytes a model may use here (default: physical memory)", int, 0),
    Option("--model-user", "model_user", "uid models run as when the citizen runs as root "
           "(default: one of their own, unused by any account)", int, metavar="UID"),
    Option("--no-landlock", "landlock", "do not confine models' writes to their duty directory "
           "with Landlock (for models that must write elsewhere)", None, True),
    Option("--verbose", "verbose", "log every message", None, False, short="-v"),
)
_BY_FIELD = {option.field: option for option in OPTIONS}


def build_parser(description: str) -> argparse.ArgumentParser:
    """The agent's command-line parser."""
    made = argparse.ArgumentParser(prog="civic-citizen", description=description)
    for option in OPTIONS:
        option.add_to(made)
    return made


def to_argv(**values: Any) -> list[str]:
    """The agent's arguments setting these fields (by ``Option.field``), in ``OPTIONS`` order;
    the token has no argument: a command line is visible to everyone (``ps``).

    Raises:
        TypeError: a field no option sets.
    """
    unknown = sorted(set(values) - set(_BY_FIELD))
    if unknown:
        raise TypeError(f"no agent option sets {', '.join(unknown)}")
    return [arg for option in OPTIONS if option.field in values
            for arg in option.argv(values[option.field])]
