"""The CIVIC wire format: length-prefixed JSON frames over TCP, with optional binary payloads.

A frame is a 4-byte big-endian length followed by that many bytes of a UTF-8 JSON object whose
``type`` names the message. A message that announces a payload (``bundle`` with its ``size``) is
followed by exactly that many raw bytes, sent and received in chunks so no side holds them whole.

The protocol grows without breaking deployed peers: both sides ignore fields they do not know,
and optional behaviour is negotiated through ``features`` in hello/welcome. A peer whose
``version`` the other side does not speak is refused with an ``error`` of code ``version``
naming the versions each side speaks.

Standard library only: the citizen agent runs this module in a bare Python image.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import math
import struct
import types
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from civic.errors import ProtocolError, UsageError

PROTOCOL_VERSION = 2  # 1 rejected unknown fields, so it could never grow
SUPPORTED_VERSIONS = (2,)  # what this side accepts from a peer
DEFAULT_PORT = 24842
MAX_FRAME = 16 * 1024 * 1024  # largest JSON frame either side accepts
MAX_INPUT = 8 * 1024 * 1024  # largest duty input (JSON bytes): one assignment always fits a frame
CHUNK = 64 * 1024  # payload chunk size
HEADER = struct.Struct(">I")
# Optional behaviour a server offers in its welcome: "batches" — it takes ``results`` frames,
# answers them with ``acks``, and may park a duty request until work appears (no ``no-work``).
BATCHES = "batches"


class ConnectionClosed(ProtocolError):
    """Raised when the peer closes the connection cleanly between frames."""


@dataclass(frozen=True)
class Hello:
    """Citizen → server, first frame: who I am (nothing yet on first contact) and what I can do.

    ``host`` is a key shared by every citizen of one machine; ``memory`` the bytes a model may
    use here (0: unknown); ``builds`` whether models with a build step can be built here;
    ``held`` the replicas an earlier connection leased that this citizen still works on or has
    results for (the server frees the others at once).
    """

    type: ClassVar[str] = "hello"
    version: int
    name: str
    platform: str = ""
    citizen_id: str | None = None
    secret: str | None = None
    token: str | None = None
    host: str = ""
    memory: int = 0
    builds: bool = False
    held: list[int] = field(default_factory=list)
    features: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Welcome:
    """Server → citizen: accepted. ``secret`` is sent once, when a new identity is issued."""

    type: ClassVar[str] = "welcome"
    version: int
    citizen_id: str
    secret: str | None = None
    heartbeat: float = 15.0
    features: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RequestDuty:
    """Citizen → server: lease me up to ``count`` duties."""

    type: ClassVar[str] = "request-duty"
    count: int = 1


@dataclass(frozen=True)
class Assignment:
    """One leased replica: what to run and on which input."""

    replica_id: int
    duty_id: int
    model: str
    model_version: int
    bundle_sha256: str
    bundle_size: int
    run: str
    build: str | None
    timeout: float
    input: Any
    memory: int | None = None  # bytes the model may use (the manifest's limit), None: no limit
    start_within: float | None = None  # seconds: a replica not started by then is given up


@dataclass(frozen=True)
class Duty:
    """Server → citizen: the replicas leased to it, each with a deadline on the server."""

    type: ClassVar[str] = "duty"
    assignments: list[Assignment]


@dataclass(frozen=True)
class NoWork:
    """Server → citizen: nothing to lease now; ask again after ``retry_after`` seconds."""

    type: ClassVar[str] = "no-work"
    retry_after: float = 2.0


@dataclass(frozen=True)
class FetchBundle:
    """Citizen → server: send me the bundle with this sha256."""

    type: ClassVar[str] = "fetch-bundle"
    sha256: str


@dataclass(frozen=True)
class Bundle:
    """Server → citizen: the bundle follows as ``size`` raw bytes."""

    type: ClassVar[str] = "bundle"
    sha256: str
    size: int


@dataclass(frozen=True)
class Result:
    """Citizen → server: what one replica produced (``output`` is the model's JSON output)."""

    type: ClassVar[str] = "result"
    replica_id: int
    exit_code: int | None
    output: Any = None
    error: str | None = None
    stderr_tail: str = ""
    elapsed: float = 0.0


@dataclass(frozen=True)
class Ack:
    """Server → citizen: the result was stored (or refused, with a reason)."""

    type: ClassVar[str] = "ack"
    replica_id: int
    accepted: bool
    reason: str | None = None


@dataclass(frozen=True)
class Results:
    """Citizen → server: several results in one frame (feature ``batches``). The citizen does
    not wait for their acks before its next request: one ``acks`` frame answers them, possibly
    after the reply to a later request."""

    type: ClassVar[str] = "results"
    results: list[Result]


@dataclass(frozen=True)
class Acks:
    """Server → citizen: the acks of one ``results`` frame (feature ``batches``)."""

    type: ClassVar[str] = "acks"
    acks: list[Ack]


@dataclass(frozen=True)
class Heartbeat:
    """Citizen → server: still alive; holding ``replica_ids``, computing ``running`` now. No reply.

    A citizen also sends one the moment it starts a replica, so its deadline becomes the
    model's timeout (plus a grace) from then; replicas held but not running are not extended.
    """

    type: ClassVar[str] = "heartbeat"
    replica_ids: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Error:
    """Either way: the connection is about to close because of ``code``."""

    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class Bye:
    """Either way: closing the connection on purpose (server draining, citizen stopping)."""

    type: ClassVar[str] = "bye"
    reason: str = ""


Message = (
    Hello | Welcome | RequestDuty | Duty | NoWork | FetchBundle | Bundle | Result | Ack | Results
    | Acks | Heartbeat | Error | Bye
)
MESSAGES: dict[str, type] = {
    cls.type: cls
    for cls in (Hello, Welcome, RequestDuty, Duty, NoWork, FetchBundle, Bundle, Result, Ack,
                Results, Acks, Heartbeat, Error, Bye)
}


def encode(message: Message, max_frame: int = MAX_FRAME) -> bytes:
    """Return the frame for a message: length header + compact JSON.

    Raises:
        ProtocolError: the message holds what JSON cannot carry (NaN, infinities, lone
            surrogates) or its frame would exceed ``max_frame``.
    """
    try:
        body = json.dumps({"type": message.type, **_fields(message)}, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False, default=_fields).encode()
    except (ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise ProtocolError(f"{message.type} cannot be encoded: {exc}") from None
    if len(body) > max_frame:
        raise ProtocolError(f"{message.type} frame of {len(body)} bytes exceeds the {max_frame} limit")
    return HEADER.pack(len(body)) + body


def _fields(value: Any) -> dict[str, Any]:
    """A message (or assignment, result, ack) as a dict of its fields, nested ones left for
    json to ask again: unlike ``asdict``, nothing is copied (a duty's input can be large)."""
    if not is_dataclass(value):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return {name: getattr(value, name) for name in _names(type(value))}


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def decode(body: bytes) -> Message:
    """Parse one frame body into its message; anything malformed raises ProtocolError only."""
    try:
        data = parse_json(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}", body) from None
    if not isinstance(data, dict):
        raise ProtocolError("frame is not a JSON object", body)
    kind = data.pop("type", None)
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("frame has an unknown or missing type", body)
    try:
        return _build(cls, data)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad {cls.type} frame: {exc}", body) from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: valid JSON text, but no JSON encoder can write it back
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to them (``1e999``), which Python
    accepts and other languages do not, are refused."""
    return json.loads(data, parse_constant=_no_constant, parse_float=_finite)


def _build(cls: type, data: Any) -> Any:
    """Construct a message dataclass from decoded JSON, checking the type of every field it
    knows; fields it does not know are ignored, so a newer peer may send more."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be an object")
    checks = _checks(cls)
    return cls(**{key: checks[key](key, value) for key, value in data.items() if key in checks})


Check = Callable[[str, Any], Any]  # (field name, value) → the value, or TypeError


@functools.cache
def _checks(cls: type) -> dict[str, Check]:
    hints = typing.get_type_hints(cls)
    return {f.name: _checker(hints[f.name]) for f in fields(cls)}


@functools.cache
def _checker(hint: Any) -> Check:
    """The check of one type hint, worked out once per hint (not once per value)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return lambda key, value: value
    if origin in (typing.Union, types.UnionType):
        options = [_checker(option) for option in args]

        def one_of(key: str, value: Any) -> Any:
            for option in options:
                try:
                    return option(key, value)
                except TypeError:
                    continue
            raise TypeError(f"field {key!r} has the wrong type")
        return one_of
    if hint is type(None):
        def null(key: str, value: Any) -> None:
            if value is not None:
                raise TypeError(f"field {key!r} must be null")
        return null
    if origin is list:
        item = _checker(args[0])

        def each(key: str, value: Any) -> list[Any]:
            if not isinstance(value, list):
                raise TypeError(f"field {key!r} must be a list")
            return [item(key, x) for x in value]
        return each
    if is_dataclass(hint):
        return lambda key, value: _build(hint, value)  # type: ignore[arg-type]

    def plain(key: str, value: Any) -> Any:
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise TypeError(f"field {key!r} must be {hint.__name__}")
        return value
    return plain


async def read_message(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> Message:
    """Read exactly one frame; a frame above ``max_frame`` is refused before its body is read."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header", exc.partial) from None
        raise ConnectionClosed("connection closed") from None
    (length,) = HEADER.unpack(header)
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_frame} limit", header)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("connection closed inside a frame", exc.partial) from None
    return decode(body)


async def send(writer: asyncio.StreamWriter, message: Message) -> None:
    """Write one frame and wait until the transport has room again."""
    writer.write(encode(message))
    await writer.drain()


async def read_payload(reader: asyncio.StreamReader, size: int) -> AsyncIterator[bytes]:
    """Yield the ``size`` payload bytes that follow a frame, in chunks of at most CHUNK."""
    if size < 0:
        raise ProtocolError(f"negative payload size {size}")
    remaining = size
    while remaining:
        try:
            chunk = await reader.readexactly(min(CHUNK, remaining))
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("connection closed inside a payload", exc.partial) from None
        remaining -= len(chunk)
        yield chunk


def size_text(count: int) -> str:
    """A byte count as people read it: ``256 MiB``, ``1.5 GiB``, ``300 bytes``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:g} {unit}"
    return f"{count} bytes"


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``HOST:PORT``, ``HOST``, ``[V6]:PORT`` or a bare IPv6 address into host and port."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest or str(default_port)
    elif address.count(":") == 1:
        host, port = address.split(":")
    elif ":" in address:  # only a bare IPv6 address has several colons and no brackets
        host, port = address, str(default_port)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            host = ""
    else:
        host, port = address, str(default_port)
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UsageError(f"not a HOST:PORT address: {address!r}")
    return host, int(port)
