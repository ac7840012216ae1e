"""The terminal belongs to the screen while the console runs.

prompt_toolkit draws on its own copies of the terminal's descriptors; descriptors 1 and 2
become a pipe whose lines go to the output pane, and 0 reads nothing. So whatever a command
starts (a child process, C code writing to fd 2) can neither scribble over the screen nor take
keystrokes from the command line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import IO

DIM, RESET = "\x1b[2m", "\x1b[0m"


class Terminal:
    """``with Terminal(sink) as (keyboard, screen):`` — the terminal's input and output for
    prompt_toolkit; lines written to descriptors 1 and 2 meanwhile go to ``sink``."""

    def __init__(self, sink: Callable[[list[str]], None]) -> None:
        self.sink = sink

    def __enter__(self) -> tuple[IO[str], IO[str]]:
        self.saved = [os.dup(fd) for fd in (0, 1, 2)]
        keyboard = os.fdopen(os.dup(0), "r")
        screen = os.fdopen(os.dup(1), "w")
        self.own = (keyboard, screen)
        read, write = os.pipe()
        nothing = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nothing, 0)
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(nothing)
        os.close(write)
        threading.Thread(target=self._relay, args=(read,), daemon=True,
                         name="console-fds").start()
        return keyboard, screen

    def _relay(self, read: int) -> None:
        with os.fdopen(read, "r", errors="replace") as pipe:
            for line in pipe:  # ends when every writer (children included) has closed it
                self.sink([f"{DIM}{line.rstrip()}{RESET}"])

    def __exit__(self, *exc: object) -> None:
        for fd, saved in enumerate(self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        for stream in self.own:
            stream.close()
