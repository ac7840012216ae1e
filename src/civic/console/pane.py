"""The output pane's lines: bounded, so a console left open for a day with a log followed keeps
the same memory and the same speed (the seed's console froze after 1,000 log lines).

Lines are kept as text with ANSI colour codes; only the lines on screen are ever parsed.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Callable

MAX_LINES = 2000  # what PageUp can reach; older lines are dropped


class Pane:
    """The last ``limit`` lines written, and how far the view is scrolled back from the end."""

    def __init__(self, limit: int = MAX_LINES, on_change: Callable[[], None] = lambda: None
                 ) -> None:
        self.lines: deque[str] = deque(maxlen=limit)
        self.limit = limit
        self.dropped = 0  # lines pushed out of the front since the last clear
        self.back = 0  # lines scrolled back from the newest (0: following the end)
        self.height = 1  # lines on screen at the last draw: how far back the view can go
        self.on_change = on_change
        self._lock = threading.Lock()

    def add(self, lines: list[str]) -> None:
        if not lines:
            return
        with self._lock:
            overflow = max(0, len(self.lines) + len(lines) - self.limit)
            self.dropped += overflow
            self.lines.extend(lines[-self.limit:])
            if self.back:  # keep a scrolled-back view still while lines arrive
                self.back = min(self.back + len(lines), max(0, len(self.lines) - self.height))
        self.on_change()

    def write(self, text: str) -> None:
        self.add(text.rstrip("\n").split("\n"))

    def clear(self) -> None:
        with self._lock:
            self.lines.clear()
            self.dropped = self.back = 0
        self.on_change()

    def scroll(self, lines: int) -> None:
        """Move the view back (positive) or forward (negative), within what is kept."""
        with self._lock:
            self.back = max(0, min(len(self.lines) - self.height, self.back + lines))
        self.on_change()

    def window(self, height: int) -> list[str]:
        """The ``height`` lines on screen (fewer when there are fewer)."""
        with self._lock:
            self.height = height
            end = max(len(self.lines) - self.back, min(height, len(self.lines)))
            start = max(0, end - height)
            return [self.lines[i] for i in range(start, end)]


class Capture(io.TextIOBase):
    """A text stream that hands each complete line to ``sink`` (a command's output as it is
    printed); after ``limit`` lines it only counts them."""

    def __init__(self, sink: Callable[[list[str]], None], limit: int | None = None) -> None:
        self.sink, self.limit = sink, limit
        self.count = 0  # lines written, shown or not
        self._partial = ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # commands must not prompt: the console asks for them

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        self._emit(lines)
        return len(text)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        """Hand over a last line without its newline."""
        if self._partial:
            self._emit([self._partial])
            self._partial = ""

    def _emit(self, lines: list[str]) -> None:
        if not lines:
            return
        room = len(lines) if self.limit is None else max(0, self.limit - self.count)
        self.count += len(lines)
        if room:
            self.sink(lines[:room])

    @property
    def hidden(self) -> int:
        """Lines written past the limit."""
        return 0 if self.limit is None else max(0, self.count - self.limit)
