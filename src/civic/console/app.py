"""The console's screen (prompt_toolkit, full screen): the live status on top, the output pane
in the middle, the command line at the bottom.

Three kinds of threads, none of which the screen ever waits on: one refreshes the status every
few seconds (one query set at a time), one runs the command typed (one at a time), one follows
the servers' events while ``logs`` is on (and one relays what child processes print). They
hand lines to the pane, which keeps a bounded number and is redrawn at most 20 times a second
whatever arrives.
"""

from __future__ import annotations

import ctypes
import io
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import ANSI, to_formatted_text
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import create_input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import (BufferControl, D, Float, FloatContainer,
                                   FormattedTextControl, HSplit, Layout, UIContent, UIControl,
                                   Window)
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.output import create_output
from prompt_toolkit.styles import Style
from rich.console import Console

from civic.console.commands import Line, Router, Runner, asks_yes, completions, help_text, parse
from civic.console.logs import Follower
from civic.console.pane import Pane
from civic.console.terminal import Terminal
from civic.errors import CivicError

RED, YELLOW, DIM, BOLD, RESET = "\x1b[31m", "\x1b[33m", "\x1b[2m", "\x1b[1m", "\x1b[0m"
PROMPT = "civic> "
STYLE = Style.from_dict({"title": "reverse", "rule": "fg:ansibrightblack",
                         "status-error": "fg:ansired"})


class ConsoleApp:
    """One console session on one database."""

    def __init__(self, command: Any, base_args: list[str], url: str, where: str,
                 status_text: Callable[[int], str], history: Path, refresh: float = 2.0
                 ) -> None:
        self.command, self.url, self.where = command, url, where
        self.status_text, self.refresh = status_text, refresh
        self.pane = Pane(on_change=self._invalidate)
        self.router = Router(fallback=self.pane.add)
        self.runner = Runner(command, base_args, self.pane.add, self._width, self.router)
        self.status_lines: list[str] = []
        self.status_error: str | None = None
        self.status_at: datetime | None = None
        self.refresh_now = threading.Event()
        self.closing = threading.Event()
        self.follower: Follower | None = None
        self.running: tuple[str, threading.Thread] | None = None
        self.confirm: Sequence[str] | None = None  # a command waiting for y to run with --yes
        self.buffer = Buffer(history=_history(history), completer=_Completer(command),
                             multiline=False, accept_handler=self._accept)
        self.app: Application[None] | None = None  # made in run(), on the terminal's copies

    # -- screen -----------------------------------------------------------------------------

    def _layout(self) -> Layout:
        prompt = Window(BufferControl(self.buffer, input_processors=[BeforeInput(self._prompt)]),
                        height=1)
        body = HSplit([
            Window(FormattedTextControl(self._status_view), height=self._status_height),
            Window(FormattedTextControl(self._rule), height=1, style="class:rule"),
            Window(PaneControl(self.pane)),
            Window(char="─", height=1, style="class:rule"),
            prompt,
        ])
        root = FloatContainer(body, floats=[Float(xcursor=True, ycursor=True,
                                                  content=CompletionsMenu(max_height=8))])
        return Layout(root, focused_element=prompt)

    def _rows(self) -> int:
        return self.app.output.get_size().rows if self.app else 24

    def _width(self) -> int:
        return self.app.output.get_size().columns if self.app else 80

    def _status_limit(self) -> int:
        return max(4, self._rows() // 2)

    def _status_height(self) -> D:
        wanted = len(self.status_lines) + 1 + bool(self.status_error)
        return D.exact(min(self._status_limit(), wanted))

    def _status_view(self) -> list[tuple[str, str]]:
        at = f"{self.status_at:%H:%M:%S}" if self.status_at else "…"
        title = (f" CIVIC console · status at {at}, every {self.refresh:g}s (F5 now) · "
                 f"{self.where}")
        fragments = [("class:title", title.ljust(self._width()) + "\n")]
        if self.status_error:
            fragments.append(("class:status-error", f"status: {self.status_error}\n"))
        lines = self.status_lines
        room = self._status_limit() - 1 - bool(self.status_error)
        if len(lines) > room:
            lines = [*lines[:room - 1], f"{DIM}… {len(lines) - room + 1} more lines: type "
                                        f"status to see them all{RESET}"]
        return [*fragments, *to_formatted_text(ANSI("\n".join(lines)))]

    def _rule(self) -> str:
        parts = [f"output: {len(self.pane.lines)} lines"]
        if self.pane.dropped:
            parts.append(f"the oldest {self.pane.dropped} dropped (keeps {self.pane.limit})")
        if self.pane.back:
            parts.append(f"scrolled back {self.pane.back} (Ctrl-End: follow)")
        if self.follower and self.follower.running:
            parts.append("following logs (Esc stops)")
        if self.running:
            parts.append(f"running: {self.running[0]} (Ctrl-C stops)")
        return "── " + " · ".join(parts) + " " + "─" * self._width()

    def _prompt(self) -> str:
        if self.confirm is not None:
            return f"run civic {' '.join(self.confirm)} --yes? [y/N] "
        return PROMPT

    def _invalidate(self) -> None:
        if self.app and self.app.is_running:
            self.app.invalidate()

    def say(self, text: str) -> None:
        self.pane.add(text.split("\n"))

    # -- keys -------------------------------------------------------------------------------

    def _keys(self) -> KeyBindings:
        kb = KeyBindings()
        confirming = Condition(lambda: self.confirm is not None)
        empty = Condition(lambda: not self.buffer.text)

        @kb.add("pageup")
        def _(event: object) -> None:
            self.pane.scroll(max(1, self._rows() // 2))

        @kb.add("pagedown")
        def _(event: object) -> None:
            self.pane.scroll(-max(1, self._rows() // 2))

        @kb.add("c-home")
        def _(event: object) -> None:
            self.pane.scroll(self.pane.limit)

        @kb.add("c-end")
        def _(event: object) -> None:
            self.pane.scroll(-self.pane.limit)

        @kb.add("f5")
        def _(event: object) -> None:
            self.refresh_now.set()

        @kb.add("c-l")
        def _(event: object) -> None:
            self.pane.clear()

        @kb.add("escape", eager=True)
        def _(event: object) -> None:
            if self.confirm is not None:
                self._answer("n")
            else:
                self._logs(("stop",))

        @kb.add("c-c")
        def _(event: object) -> None:
            if self.confirm is not None:
                self._answer("n")
            elif self.running:
                self._interrupt()
            else:
                self.buffer.reset()

        @kb.add("c-d", filter=empty)
        def _(event: object) -> None:
            self.app.exit()

        @kb.add("enter", filter=confirming, eager=True)
        def _(event: object) -> None:
            answer = self.buffer.text
            self.buffer.reset()
            self._answer(answer)

        return kb

    # -- commands ---------------------------------------------------------------------------

    def _accept(self, buffer: Buffer) -> bool:
        self.handle(buffer.text)
        return False  # empty the line

    def handle(self, text: str) -> None:
        line: Line = parse(text, self.command)
        if line.error is None and line.word is None and not line.argv:
            return
        self.pane.scroll(-self.pane.limit)  # a command typed: back to the end, to see it
        self.say(f"{BOLD}{PROMPT}{text}{RESET}")
        if line.error:
            self.say(f"{RED}{line.error}{RESET}")
        elif line.word:
            words = {"help": self._help, "clear": self._clear, "quit": self._quit,
                     "status": self._status_word, "logs": self._logs}
            words[line.word](line.args)
        else:
            self.start(line.argv, line.limit)

    def start(self, argv: Sequence[str], limit: int | None = None) -> None:
        if self.running:
            self.say(f"{RED}busy: civic {self.running[0]} is still running (Ctrl-C stops it)"
                     f"{RESET}")
            return
        thread = threading.Thread(target=self._work, args=(argv, limit), daemon=True,
                                  name="console-command")
        self.running = (" ".join(argv), thread)
        thread.start()
        self._invalidate()

    def _work(self, argv: Sequence[str], limit: int | None) -> None:
        try:
            outcome = self.runner.run(argv, limit)
            asks = outcome.code == 2 and asks_yes(self.command, argv)
            if outcome.message:  # a refusal that only wants --yes is a question, not an error
                self.say(f"{YELLOW}{outcome.message}{RESET}" if asks
                         else f"{RED}error: {outcome.message}{RESET}")
            if outcome.truncated:
                self.say(f"{DIM}… only the first {limit} lines are shown here; "
                         f"civic {' '.join(argv)} -o FILE writes them all{RESET}")
            elif outcome.code and not outcome.message and not asks:
                self.say(f"{DIM}(exit {outcome.code}){RESET}")
            if asks:
                self.confirm = tuple(argv)
        finally:
            self.running = None
            self.refresh_now.set()  # the command may have changed what status shows
            self._invalidate()

    def _answer(self, answer: str) -> None:
        argv, self.confirm = self.confirm, None
        self.pane.scroll(-self.pane.limit)
        if argv is not None and answer.strip().lower() in ("y", "yes"):
            self.say(f"{BOLD}{PROMPT}{' '.join(argv)} --yes{RESET}")
            self.start([*argv, "--yes"])
        else:
            self.say(f"{DIM}not run{RESET}")

    def _interrupt(self) -> None:
        """Ctrl-C for the command's thread: a KeyboardInterrupt raised in it at its next
        Python instruction (a query already sent finishes first)."""
        if self.running:
            ident = self.running[1].ident
            if ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                           ctypes.py_object(KeyboardInterrupt))
            self.say(f"{DIM}stopping civic {self.running[0]}…{RESET}")

    # -- console words ----------------------------------------------------------------------

    def _help(self, args: Sequence[str]) -> None:
        if args:
            self.start([*args, "--help"])
            return
        text = io.StringIO()
        Console(file=text, width=self._width(), color_system="standard",
                soft_wrap=True).print(help_text(self.command), highlight=False)
        self.say(text.getvalue().rstrip("\n"))

    def _clear(self, args: Sequence[str]) -> None:
        self.pane.clear()

    def _quit(self, args: Sequence[str]) -> None:
        self.app.exit()

    def _status_word(self, args: Sequence[str]) -> None:
        """``status``: the top now, and the whole status printed into the pane."""
        self.refresh_now.set()
        self.start(["status"])

    def _logs(self, args: Sequence[str]) -> None:
        if args == ("stop",):
            if self.follower and self.follower.running:
                self.follower.stop()
                self.say(f"{DIM}stopped following logs{RESET}")
            return
        if args:
            self.say(f"{RED}logs takes no arguments but stop{RESET}")
            return
        if self.follower and self.follower.running:
            self.say(f"{DIM}already following logs (logs stop, or Esc, stops){RESET}")
            return
        self.say(f"{DIM}the servers' recent events, then new ones as they come "
                 f"(logs stop, or Esc, stops){RESET}")
        self.follower = Follower(self.url, self.pane.add)
        self.follower.start()

    # -- running ----------------------------------------------------------------------------

    def _refresh_status(self) -> None:
        while not self.closing.is_set():
            try:
                text = self.status_text(self._width())
                self.status_lines, self.status_error = text.rstrip("\n").split("\n"), None
            except CivicError as exc:
                self.status_error = f"{exc} (trying again)"
            except Exception as exc:  # noqa: BLE001 - the screen must outlive any failure
                self.status_error = f"{type(exc).__name__}: {exc} (trying again)"
            self.status_at = datetime.now()
            self._invalidate()
            self.refresh_now.wait(self.refresh)
            self.refresh_now.clear()

    def run(self) -> None:
        saved = self.router.install()
        handlers = logging.root.handlers[:]
        logging.root.handlers = [_PaneHandler(self.pane)]
        self.say(f"CIVIC console on {self.where}.\nType {BOLD}help{RESET} for the commands; "
                 f"{BOLD}quit{RESET} or Ctrl-D leaves.")
        try:
            with Terminal(self.pane.add) as (keyboard, screen):
                self.app = Application(
                    layout=self._layout(), key_bindings=self._keys(), style=STYLE,
                    full_screen=True, min_redraw_interval=0.05, input=create_input(keyboard),
                    output=create_output(stdout=screen))
                threading.Thread(target=self._refresh_status, daemon=True,
                                 name="console-status").start()
                self.app.run()
        finally:
            self.closing.set()
            self.refresh_now.set()
            if self.follower:
                self.follower.stop()
            logging.root.handlers = handlers
            sys.stdin, sys.stdout, sys.stderr = saved  # type: ignore[assignment]


class _PaneHandler(logging.Handler):
    """Log records of this process (warnings and errors) as pane lines, not on the screen."""

    def __init__(self, pane: Pane) -> None:
        super().__init__(logging.WARNING)
        self.pane = pane
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pane.write(f"{DIM}{self.format(record)}{RESET}")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class PaneControl(UIControl):
    """The output pane: only the lines on screen are parsed and wrapped."""

    def __init__(self, pane: Pane) -> None:
        self.pane = pane

    def is_focusable(self) -> bool:
        return False

    def create_content(self, width: int, height: int | None) -> UIContent:
        height = height or 1
        rows: list[list[tuple[str, str]]] = []
        for text in self.pane.window(height):
            rows.extend(_wrap(to_formatted_text(ANSI(text)), max(1, width)))
        rows = rows[-height:]
        return UIContent(get_line=lambda i: rows[i], line_count=len(rows))


def _wrap(fragments: Sequence[tuple[str, str] | tuple[str, str, object]], width: int
          ) -> list[list[tuple[str, str]]]:
    rows: list[list[tuple[str, str]]] = []
    row: list[tuple[str, str]] = []
    used = 0
    for style, text, *_ in fragments:
        while text:
            take = text[:width - used]
            row.append((style, take))
            used += len(take)
            text = text[len(take):]
            if used >= width:
                rows.append(row)
                row, used = [], 0
    if row or not rows:
        rows.append(row)
    return rows


class _Completer(Completer):
    def __init__(self, command: Any) -> None:
        self.command = command

    def get_completions(self, document, complete_event):  # type: ignore[no-untyped-def]
        before = document.text_before_cursor
        words = before.split()
        current = "" if not words or before.endswith(" ") else words.pop()
        for word in completions(self.command, words, current):
            yield Completion(word, start_position=-len(current))


def _history(path: Path) -> History:
    """The command line's history, kept across sessions in the home (in memory when the
    home is not writable)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        return FileHistory(str(path))
    except OSError:
        return InMemoryHistory()
