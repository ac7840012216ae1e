"""What a line typed in the console means, and running it.

``command`` below is the click command typer builds of the ``civic`` app (typer.main.get_command):
groups have a ``commands`` mapping, commands have ``params``; nothing else of it is used.

A line is a console word (``help``, ``logs``, ``clear``, ``quit``), a short alias of a civic
command (``pause 3`` is ``civic dataset pause 3``), or any civic command line (``model add DIR``,
with or without the leading ``civic``). Civic commands run in-process through the typer app the
``civic`` command uses, with their output captured into the output pane.
"""

from __future__ import annotations

import io
import shlex
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from civic.console.pane import Capture
from civic.errors import CivicError


@dataclass(frozen=True)
class Alias:
    """``word ARGS…`` runs ``civic EXPANDS… ARGS…``."""

    word: str
    expands: tuple[str, ...]
    usage: str
    help: str
    limit: int | None = None  # lines shown in the pane (the rest is not computed)


RESULT_LINES = 50

ALIASES = {a.word: a for a in (
    Alias("models", ("model", "list"), "models", "models and their versions"),
    Alias("datasets", ("dataset", "list"), "datasets", "datasets and their duties by state"),
    Alias("citizens", ("citizen", "list"), "citizens", "this machine's citizen containers"),
    Alias("volunteers", ("volunteer", "list"), "volunteers", "volunteers and their citizens"),
    Alias("duty", ("duty", "show"), "duty ID", "a duty: input, replicas, result, why it waits"),
    Alias("results", ("results", "export"), "results MODEL",
          f"the first {RESULT_LINES} rows of a model's verified results", RESULT_LINES),
    Alias("pause", ("dataset", "pause"), "pause ID", "no new leases for a dataset"),
    Alias("resume", ("dataset", "resume"), "resume ID", "lease a paused dataset again"),
    Alias("cancel", ("dataset", "cancel"), "cancel ID", "give up a dataset's unfinished duties"),
    Alias("retry", ("duties", "retry"), "retry [OPTIONS]",
          "re-queue failed duties (help duties retry: options)"),
    Alias("block", ("citizen", "block"), "block NAME", "refuse a citizen at once"),
    Alias("unblock", ("citizen", "unblock"), "unblock NAME", "let a blocked citizen back"),
    Alias("drain", ("server", "drain"), "drain", "servers lease nothing more, finish what is out"),
    Alias("undrain", ("server", "undrain"), "undrain", "servers lease again"),
)}

CONSOLE_WORDS = {
    "status": "status now, here and in the pane above",
    "logs": "follow the servers' log lines and events (logs stop, or Esc, stops)",
    "help": "this list; help COMMAND shows a civic command's options",
    "clear": "empty the output pane (Ctrl-L)",
    "quit": "leave the console (also exit, Ctrl-D)",
}
QUIT = ("quit", "exit")

# Commands that run in the foreground until stopped: they belong in a terminal of their own.
FOREGROUND = {("server", "run"), ("server", "console"), ("run",), ("citizen", "run")}


@dataclass(frozen=True)
class Line:
    """A parsed line: a console word with its arguments, or the argv of a civic command."""

    word: str | None = None
    args: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    limit: int | None = None
    error: str | None = None


def parse(text: str, command: Any) -> Line:
    """What ``text`` asks for; ``error`` says why it cannot run."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        return Line(error=f"cannot read that line: {exc}")
    if words and words[0] == "civic":
        words = words[1:]
        if not words:
            return Line(error="civic what? (help lists the commands)")
    if not words:
        return Line()
    head, rest = words[0], tuple(words[1:])
    if head in QUIT:
        return Line(word="quit")
    if head in CONSOLE_WORDS and not (head == "status" and rest):
        return Line(word=head, args=rest)
    alias = ALIASES.get(head)
    if alias and not _is_subcommand(command, head, rest):
        argv = (*alias.expands, *rest)
        return Line(argv=argv, limit=alias.limit)
    if head not in command.commands and not head.startswith("-"):
        return Line(error=f"unknown command: {head} (help lists the commands)")
    argv = tuple(words)
    if _path(command, argv) in FOREGROUND:
        return Line(error=f"civic {' '.join(_path(command, argv))} runs until stopped: run it "
                          "in a terminal of its own")
    if _path(command, argv) == ("citizen", "spawn") and not _docker_runtime(argv):
        return Line(error="in the console, citizen spawn needs --runtime docker (process "
                          "citizens run until stopped: spawn them in a terminal of their own)")
    return Line(argv=argv)


def _docker_runtime(argv: Sequence[str]) -> bool:
    return "--runtime=docker" in argv or any(
        a == "--runtime" and b == "docker" for a, b in zip(argv, argv[1:]))


def _is_subcommand(command: Any, head: str, rest: Sequence[str]) -> bool:
    """``duty show 3`` typed in full, where ``duty`` is also an alias."""
    group = command.commands.get(head)
    return (_is_group(group) and bool(rest)
            and (rest[0] in group.commands or rest[0] in ("--help", "-h")))


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _path(command: Any, argv: Sequence[str]) -> tuple[str, ...]:
    """The command names at the start of ``argv`` (``dataset list`` of ``dataset list 3``)."""
    path: list[str] = []
    for word in argv:
        if not _is_group(command) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return tuple(path)


def leaf(command: Any, argv: Sequence[str]) -> Any:
    """The command ``argv`` runs (the group itself when it names no subcommand)."""
    for word in _path(command, argv):
        command = command.commands[word]  # type: ignore[attr-defined]
    return command


def asks_yes(command: Any, argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs a command that confirms with --yes and was not given it."""
    options = {o for p in leaf(command, argv).params for o in getattr(p, "opts", ())}
    return "--yes" in options and not {"--yes", "-y"} & set(argv)


def help_text(command: Any) -> str:
    """The console's help (rich markup): its own words, the short forms, every civic command."""
    lines = ["[bold]console[/]"]
    lines += [f"  {w:<8} {h}" for w, h in CONSOLE_WORDS.items()]
    lines += ["", "[bold]short forms[/]"]
    lines += [f"  {a.usage:<17} {'civic ' + ' '.join(a.expands):<22} {a.help}"
              for a in ALIASES.values()]
    lines += ["", "[bold]civic commands[/]: any civic command line works, e.g. "
                  "[cyan]model add DIR[/], [cyan]dataset import MODEL FILE[/]; "
                  "[cyan]help COMMAND[/] shows its options"]
    for name, sub in sorted(command.commands.items()):
        if sub.hidden:  # aliases such as `duties`
            continue
        what = " ".join(sorted(sub.commands)) if _is_group(sub) else _short(sub)
        lines.append(f"  {name:<10} {what}")
    lines += ["", "keys: PageUp/PageDown scroll, Ctrl-Home/Ctrl-End go to the top/end, Tab "
                  "completes, Up/Down history, F5 refreshes the status, Ctrl-C stops a running "
                  "command, Esc stops logs"]
    return "\n".join(lines)


def _short(command: Any) -> str:
    return command.get_short_help_str(limit=70)


def completions(command: Any, words: Sequence[str], current: str) -> list[str]:
    """Words that may follow ``words`` on the line, starting with ``current``."""
    if not words:
        found: Iterable[str] = [*CONSOLE_WORDS, *QUIT, *ALIASES, *command.commands]
    else:
        alias = ALIASES.get(words[0])
        argv = ((*alias.expands, *words[1:]) if alias and not _is_subcommand(
            command, words[0], words[1:]) else tuple(w for w in words if w != "civic"))
        target = leaf(command, argv)
        found = []
        if words == ["logs"]:
            found = ["stop"]
        elif _is_group(target) and len(_path(command, argv)) == len(argv):
            found = list(target.commands)
        if current.startswith("-"):
            found = ["--help", *(o for p in target.params for o in getattr(p, "opts", ())
                                 if o.startswith("--"))]
    return sorted({w for w in found if w.startswith(current)})


class _Truncated(BaseException):
    """The command printed all the pane shows of it (not an Exception: nothing catches it)."""


@dataclass
class Outcome:
    code: int
    shown: int = 0  # lines the command printed
    truncated: bool = False
    message: str = ""  # the error, when it failed with one


@dataclass
class Runner:
    """Runs civic commands in-process, printing into ``sink``. One command at a time."""

    command: Any
    base_args: list[str]  # --database-url and --home of the console, ahead of every command
    sink: Callable[[list[str]], None]
    width: Callable[[], int]
    router: Router = field(default_factory=lambda: Router())

    def run(self, argv: Sequence[str], limit: int | None = None) -> Outcome:
        capture = _LimitedCapture(self.sink, limit)
        out = Console(file=capture, width=self.width(), color_system="standard",
                      force_terminal=False, force_interactive=False, soft_wrap=True)
        self.router.target.stream = capture
        code, message, truncated = 0, "", False
        try:
            self.command.main(args=[*self.base_args, *argv], prog_name="civic",
                              obj={"out": out, "err": out}, standalone_mode=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except CivicError as exc:
            code, message = exc.exit_code, str(exc)
        except _Truncated:
            truncated = True
        except KeyboardInterrupt:  # Ctrl-C in the console, delivered to this thread
            code, message = 130, "interrupted"
        except Exception as exc:  # a bug in a command must not take the console down
            code, message = 1, f"{type(exc).__name__}: {exc}"
        finally:
            self.router.target.stream = None
            try:
                capture.finish()
            except _Truncated:
                truncated = True
        return Outcome(code, capture.count, truncated, message)


class _LimitedCapture(Capture):
    """A capture that stops the command once the pane has all it will show of it."""

    def _emit(self, lines: list[str]) -> None:
        super()._emit(lines)
        if self.limit is not None and self.count > self.limit:
            raise _Truncated


class _Target(threading.local):
    stream: Capture | None = None


class Router(Capture):
    """sys.stdout and sys.stderr while the console runs: what a command prints goes to its
    capture; anything else printed (by any thread) goes to ``fallback``, never to the screen
    prompt_toolkit draws."""

    def __init__(self, fallback: Callable[[list[str]], None] = lambda lines: None) -> None:
        super().__init__(fallback)
        self.target = _Target()

    def write(self, text: str) -> int:
        stream = self.target.stream
        return stream.write(text) if stream is not None else super().write(text)

    def install(self) -> tuple[object, object, object]:
        saved = sys.stdin, sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self  # type: ignore[assignment]
        sys.stdin = _NoInput()  # commands never read the keyboard: the console owns it
        return saved


class _NoInput(Capture):
    """Standard input of commands in the console: empty, as /dev/null."""

    def __init__(self) -> None:
        super().__init__(lambda lines: None)
        self.buffer = io.BytesIO(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        return ""

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        return ""
