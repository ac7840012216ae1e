"""Streaming readers for dataset files: file → records → duties.

Every reader streams, so a dataset may be far larger than memory, and every failure surfaces as a
``DatasetError`` carrying the line at fault. Standard library only.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, BinaryIO

from civic.errors import DatasetError, UsageError

FORMATS = ("csv", "json", "jsonl", "lines")
CHUNK = 64 * 1024  # bytes per read of a json file, and per progress report
_MARGIN = 16  # longer than any JSON token that can be cut off at a buffer's end ("-Infinity", "\uXXXX")
_WS = re.compile(r"[ \t\n\r]*")
_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "lines", ".lines": "lines"}

OnBytes = Callable[[int], None] | None
STDIN = Path("-")  # the dataset "file" that means standard input


def display_name(path: Path) -> str:
    """How a dataset source is named in messages."""
    return "<stdin>" if path == STDIN else str(path)


@dataclass(frozen=True)
class Record:
    """One record of a dataset.

    Attributes:
        line: 1-based line number in the file where the record starts.
        value: The record as a JSON-compatible value.
    """

    line: int
    value: Any


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # inf would leave as "Infinity", which other JSON parsers reject
        raise ValueError(f"number {text} is too large")
    return number


_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def guess_format(path: Path) -> str:
    """Return the dataset format implied by the file's extension.

    Raises:
        UsageError: If the extension is not one CIVIC knows.
    """
    if fmt := _EXTENSIONS.get(Path(path).suffix.lower()):
        return fmt
    raise UsageError(f"{path}: cannot tell the dataset format from its extension; pass --format ({', '.join(FORMATS)})")


def read_records(path: Path, fmt: str, *, on_bytes: OnBytes = None,
                 digest: Any = None) -> Iterator[Record]:
    """Stream the records of a dataset file without loading it whole.

    Args:
        path: The dataset file; ``-`` reads standard input.
        fmt: One of ``FORMATS``.
        on_bytes: Called now and then with the number of bytes consumed so far, for a progress bar.
        digest: A hashlib object fed every byte read (so an import knows its content's sha256).

    Raises:
        UsageError: At once, if ``fmt`` is unknown.
        DatasetError: While iterating, if the file cannot be read, a record cannot be parsed or there are none.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown dataset format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    return _records(Path(path), fmt, on_bytes, digest)


def cut(records: Iterable[Record], per_duty: int) -> Iterator[list[Record]]:
    """Group records into consecutive slices of ``per_duty``; the last may be shorter.

    Raises:
        UsageError: At once, if ``per_duty`` is below 1.
    """
    if per_duty < 1:
        raise UsageError(f"records per duty must be at least 1, got {per_duty}")
    it = iter(records)
    return iter(lambda: list(islice(it, per_duty)), [])  # stops at the first empty slice


class _Digesting(io.RawIOBase):
    """A readable stream that feeds every byte it passes on to a hashlib object."""

    def __init__(self, raw: BinaryIO, digest: Any, owned: bool) -> None:
        super().__init__()
        self.raw, self.digest, self.owned = raw, digest, owned

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.owned and not self.closed:
            self.raw.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n


def _open(path: Path, fmt: str, digest: Any) -> IO[Any]:
    raw: BinaryIO = sys.stdin.buffer if path == STDIN else open(path, "rb")
    binary = io.BufferedReader(_Digesting(raw, digest or hashlib.sha256(), raw is not sys.stdin.buffer))
    if fmt == "json":
        return binary
    # csv wants newline="" so quoted newlines survive; the others split on "\n" only.
    return io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape",
                            newline="" if fmt == "csv" else "\n")


def _records(path: Path, fmt: str, on_bytes: OnBytes, digest: Any) -> Iterator[Record]:
    count = 0
    shown = display_name(path)
    try:
        with _open(path, fmt, digest) as f:
            readers: dict[str, Callable[[Path, Any, OnBytes], Iterable[Record]]] = {
                "csv": _csv, "json": _JsonArray, "jsonl": _jsonl, "lines": _lines
            }
            reader = readers[fmt]
            for count, record in enumerate(reader(Path(shown), f, on_bytes), 1):
                yield record
    except OSError as e:
        raise DatasetError(shown, f"cannot read: {e.strerror or e}") from None
    if not count:
        raise DatasetError(shown, "no records")


def _text_lines(path: Path, f: IO[str], on_bytes: OnBytes) -> Iterator[tuple[int, str]]:
    """Yield (line number, line with its ending), checking UTF-8 one line at a time so errors have a line."""
    done = reported = 0
    for n, line in enumerate(f, 1):
        try:
            done += len(line.encode("utf-8"))  # surrogateescape leaves invalid bytes unencodable
        except UnicodeEncodeError:
            raise DatasetError(path, "invalid UTF-8", line=n) from None
        if on_bytes and done - reported >= CHUNK:
            on_bytes(reported := done)
        yield n, line.removeprefix("\ufeff") if n == 1 else line
    if on_bytes:
        on_bytes(done)


def _lines(path: Path, f: IO[str], on_bytes: OnBytes) -> Iterator[Record]:
    for n, line in _text_lines(path, f, on_bytes):
        if text := line.removesuffix("\n").removesuffix("\r"):
            yield Record(n, text)


def _jsonl(path: Path, f: IO[str], on_bytes: OnBytes) -> Iterator[Record]:
    for n, line in _text_lines(path, f, on_bytes):
        if not line.strip():
            continue
        try:
            value = _DECODER.decode(line)
        except json.JSONDecodeError as e:
            raise DatasetError(path, f"invalid JSON: {e.msg}", line=n) from None
        except (ValueError, RecursionError) as e:
            raise DatasetError(path, f"invalid JSON: {e}", line=n) from None
        yield Record(n, value)


def _csv(path: Path, f: IO[str], on_bytes: OnBytes) -> Iterator[Record]:
    reader = csv.reader((line for _, line in _text_lines(path, f, on_bytes)), strict=True)
    header: list[str] | None = None
    after = 0  # the line the previous row ended on
    try:
        while (row := next(reader, None)) is not None:
            start, after = after + 1, reader.line_num
            if not row:  # a blank line
                continue
            if header is None:
                if not all(name.strip() for name in row):
                    raise DatasetError(path, "empty column name in header", line=start)
                if dupes := sorted({name for name in row if row.count(name) > 1}):
                    raise DatasetError(path, f"duplicate column name '{dupes[0]}' in header", line=start)
                header = row
            elif len(row) != len(header):
                raise DatasetError(path, f"expected {len(header)} fields, found {len(row)}", line=start)
            else:
                yield Record(start, dict(zip(header, row)))
    except csv.Error as e:
        raise DatasetError(path, f"invalid CSV: {e}", line=reader.line_num) from None


class _JsonArray:
    """Streams the elements of one top-level JSON array through a text buffer refilled from the file.

    An element is accepted only once the ',' or ']' after it is in the buffer, so a number cut off
    by the buffer's end ("12" of "1234") is never taken for a whole one; a failed parse near the
    buffer's end is retried with more text before it counts as an error.
    """

    def __init__(self, path: Path, f: IO[bytes], on_bytes: OnBytes) -> None:
        self.path, self.f, self.on_bytes = path, f, on_bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf, self.pos, self.line, self.done, self.eof = "", 0, 1, 0, False

    def __iter__(self) -> Iterator[Record]:
        """Yield each element of the array, then check nothing but whitespace follows it."""
        if not (c := self._peek()):
            return
        if c != "[":
            raise self._error("expected a JSON array starting with '['", self.pos)
        self._advance(self.pos + 1)
        if self._peek() == "]":
            self._advance(self.pos + 1)
        else:
            while True:
                line, value, delimiter = self._element()
                yield Record(line, value)
                if delimiter == "]":
                    break
        if self._peek():
            raise self._error("unexpected data after the array", self.pos)

    def _element(self) -> tuple[int, Any, str]:
        """Decode the element at the cursor and consume the delimiter after it."""
        self._peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # An unterminated string may just be longer than the buffer: only the file's end settles it.
                if self.eof or (self._settled(e.pos) and not e.msg.startswith("Unterminated string")):
                    raise self._error(f"invalid JSON: {e.msg}", e.pos) from None
                self._fill()
                continue
            except (ValueError, RecursionError) as e:
                raise self._error(f"invalid JSON: {e}", self.pos) from None
            after = _WS.match(self.buf, end).end()
            if after < len(self.buf) and self.buf[after] in ",]":
                line = self.line
                self._advance(after + 1)
                return line, value, self.buf[after]
            if self._settled(after):
                found = "unexpected end of file" if after == len(self.buf) else "expected ',' or ']' after an element"
                raise self._error(found, after)
            self._fill()

    def _settled(self, index: int) -> bool:
        """Whether more text could not change how the buffer parses at ``index``."""
        return self.eof or index + _MARGIN < len(self.buf)

    def _peek(self) -> str:
        """Skip whitespace, refilling as needed; return the next character, or "" at the end of the file."""
        while True:
            self._advance(_WS.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self._fill()

    def _advance(self, index: int) -> None:
        self.line += self.buf.count("\n", self.pos, index)
        self.pos = index

    def _fill(self) -> None:
        # Read at least as much as is pending, so re-parsing a huge element stays linear overall.
        raw = self.f.read(max(CHUNK, len(self.buf) - self.pos))
        self.done += len(raw)
        try:
            text = self.utf8.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            bad = self.buf.count("\n", self.pos) + e.object[: e.start].count(b"\n")
            raise DatasetError(self.path, "invalid UTF-8", line=self.line + bad) from None
        self.buf, self.pos, self.eof = self.buf[self.pos :] + text, 0, not raw
        if self.on_bytes:
            self.on_bytes(self.done)

    def _error(self, message: str, index: int) -> DatasetError:
        return DatasetError(self.path, message, line=self.line + self.buf.count("\n", self.pos, index))
