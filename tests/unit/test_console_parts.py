"""The console's parts that need no terminal: reading a line, completion, the bounded pane, and
running a command in-process (a small real typer app stands in for civic's)."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer

from civic.cli.main import app as civic_app
from civic.console.commands import Runner, asks_yes, completions, parse
from civic.console.pane import Pane
from civic.errors import NotFound, UsageError

CIVIC = typer.main.get_command(civic_app)


@pytest.mark.parametrize(("typed", "argv"), [
    ("datasets", ("dataset", "list")),
    ("pause 3", ("dataset", "pause", "3")),
    ("retry --dataset 2 --state failed", ("duties", "retry", "--dataset", "2", "--state",
                                          "failed")),
    ("block 'alpha 1'", ("citizen", "block", "alpha 1")),
    ("results alphabet", ("results", "export", "alphabet")),
    ("results export alphabet --format jsonl", ("results", "export", "alphabet", "--format",
                                                "jsonl")),
    ("civic model add examples/alphabet", ("model", "add", "examples/alphabet")),
    ("status --json", ("status", "--json")),
])
def test_short_forms_and_full_commands(typed: str, argv: tuple[str, ...]) -> None:
    assert parse(typed, CIVIC).argv == argv


def test_console_words_and_refusals() -> None:
    assert parse("quit", CIVIC).word == parse("exit", CIVIC).word == "quit"
    assert parse("logs stop", CIVIC).word == "logs"
    assert parse("status", CIVIC).word == "status"
    assert parse("results alphabet", CIVIC).limit == 50
    assert "unknown command: frobnicate" in (parse("frobnicate 3", CIVIC).error or "")
    assert "cannot read that line" in (parse("block 'alpha", CIVIC).error or "")
    assert "runs until stopped" in (parse("server run", CIVIC).error or "")
    assert "--runtime docker" in (parse("citizen spawn -n 2 h:1", CIVIC).error or "")
    assert parse("citizen spawn --runtime docker -n 2 h:1", CIVIC).error is None
    assert parse("   ", CIVIC) == parse("", CIVIC)


def test_completion() -> None:
    assert {"datasets", "dataset", "duty"} <= set(completions(CIVIC, [], "d"))
    assert {"import", "list"} <= set(completions(CIVIC, ["dataset"], ""))
    assert completions(CIVIC, ["datasets"], "--") == ["--help", "--json"]
    assert completions(CIVIC, ["logs"], "") == ["stop"]


def test_pane_keeps_the_last_lines_and_a_still_view() -> None:
    pane = Pane(limit=100)
    pane.add([f"line {n}" for n in range(250)])
    assert len(pane.lines) == 100 and pane.dropped == 150
    assert pane.window(3) == ["line 247", "line 248", "line 249"]
    pane.scroll(10)
    view = pane.window(3)
    pane.add(["new 1", "new 2"])  # scrolled back: the view does not move
    assert pane.window(3) == view
    pane.scroll(1000)  # to the top: the first lines kept (two more were dropped) fill it
    assert pane.window(3) == ["line 152", "line 153", "line 154"]
    pane.scroll(-1000)
    assert pane.window(1) == ["new 2"]


confirming = typer.Typer()


@confirming.command("wipe")
def wipe(yes: Annotated[bool, typer.Option("--yes")] = False) -> None:
    if not yes:
        raise UsageError("would wipe 3 things: pass --yes")
    print("wiped")


@confirming.command("find")
def find(name: str) -> None:
    raise NotFound(f"no {name}")


@confirming.command("count")
def count(upto: int) -> None:
    for n in range(upto):
        print(f"row {n}")
    raise AssertionError("never reached: the pane had all it shows")


def test_runner_captures_output_and_errors() -> None:
    command = typer.main.get_command(confirming)
    lines: list[str] = []
    runner = Runner(command, [], lines.extend, lambda: 80)
    saved = runner.router.install()
    try:
        refused = runner.run(["wipe"])
        assert (refused.code, refused.message) == (2, "would wipe 3 things: pass --yes")
        assert asks_yes(command, ["wipe"]) and not asks_yes(command, ["wipe", "--yes"])
        assert runner.run(["wipe", "--yes"]).code == 0 and lines == ["wiped"]
        assert runner.run(["find", "x"]).message == "no x"
        assert runner.run(["nothing"]).code == 2  # click's usage error, printed, no exception
        lines.clear()
        cut = runner.run(["count", "1000"], limit=5)  # stopped once the pane has its 5 lines
        assert cut.truncated and cut.code == 0 and lines == [f"row {n}" for n in range(5)]
    finally:
        import sys
        sys.stdin, sys.stdout, sys.stderr = saved  # type: ignore[assignment]
