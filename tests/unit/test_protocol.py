"""Tests for civic.protocol: the frame format, strict decoding, stream reading and addresses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civic.errors import ProtocolError, UsageError
from civic.protocol import (
    CHUNK,
    DEFAULT_PORT,
    HEADER,
    MESSAGES,
    Ack,
    Acks,
    Assignment,
    Bundle,
    Bye,
    ConnectionClosed,
    Duty,
    Error,
    FetchBundle,
    Heartbeat,
    Hello,
    NoWork,
    RequestDuty,
    Result,
    Results,
    Welcome,
    decode,
    encode,
    parse_address,
    read_message,
    read_payload,
)

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def assignment(replica_id: int = 1, **overrides: Any) -> Assignment:
    fields = dict(replica_id=replica_id, duty_id=10, model="alphabet", model_version=2,
                  bundle_sha256="ab" * 32, bundle_size=1234, run="./run {input} {output}",
                  build=None, timeout=30.0, input={"letter": "a", "n": [1, 2.5, None]})
    return Assignment(**{**fields, **overrides})


SAMPLES = [
    Hello(1, "laptop"),
    Hello(1, "laptop", "linux-x86_64 python3.11", "cid", "s3cret", "join-token"),
    Welcome(1, "cid", "s3cret", 5.0),
    Welcome(1, "cid"),
    RequestDuty(3),
    Duty([assignment(1), assignment(2, build="make", input=["x", {"deep": [True, False]}])]),
    Duty([]),
    NoWork(0.5),
    FetchBundle("cd" * 32),
    Bundle("cd" * 32, 4096),
    Result(7, 0, {"b": [1, 2.5, "ü", None, True], "a": {"nested": {}}}, None, "", 1.25),
    Result(7, None, None, "timed out after 3s", "last words\n", 3.0),
    Result(8, 0, "just a string"),
    Ack(7, True),
    Ack(7, False, "duplicate"),
    Results([Result(7, 0, [1]), Result(9, None, None, "timed out", "", 2.0)]),
    Results([]),
    Acks([Ack(7, True), Ack(9, False, "duplicate")]),
    Heartbeat([1, 2, 3]),
    Heartbeat(),
    Error("refused", "bad token"),
    Bye("draining"),
    Bye(),
]


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())


def stream(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    """A StreamReader fed with ``chunks`` (call inside a running loop)."""
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def collect(reader: asyncio.StreamReader, size: int) -> bytes:
    return b"".join([chunk async for chunk in read_payload(reader, size)])


# --- encode / decode ------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {type(m).type for m in SAMPLES} == set(MESSAGES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    frame = encode(message)
    (length,) = HEADER.unpack(frame[:HEADER.size])
    assert length == len(frame) - HEADER.size
    assert json.loads(frame[HEADER.size:])["type"] == message.type
    assert decode(frame[HEADER.size:]) == message


def test_duty_decodes_nested_assignments_as_objects() -> None:
    duty = decode(encode(Duty([assignment(1), assignment(2)]))[HEADER.size:])
    assert all(isinstance(a, Assignment) for a in duty.assignments)
    assert [a.replica_id for a in duty.assignments] == [1, 2]


def test_fields_a_newer_peer_adds_are_ignored() -> None:
    """A newer peer may send fields this side does not know: the protocol can grow."""
    assert decode(b'{"type": "bye", "reason": "x", "extra": 1}') == Bye("x")
    frame = json.loads(encode(Duty([assignment(1)]))[HEADER.size:])
    frame["assignments"][0]["gpu"] = {"model": "a future field"}
    frame["priority"] = 3
    assert decode(json.dumps(frame).encode()) == Duty([assignment(1)])


@pytest.mark.parametrize("output", [[1e999], float("inf"), float("nan"), "\ud800"])
def test_what_json_cannot_carry_is_refused_by_encode_with_a_protocol_error(output: Any) -> None:
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        encode(Result(1, 0, output))


@pytest.mark.parametrize("text", [b"[1e999]", b"-1e400", b'{"a": [NaN]}', b"Infinity"])
def test_parse_json_refuses_numbers_that_are_not_finite(text: bytes) -> None:
    from civic.protocol import parse_json
    with pytest.raises(ValueError):
        parse_json(text)


def test_integer_accepted_for_float_field() -> None:
    welcome = decode(b'{"type":"welcome","version":1,"citizen_id":"c","heartbeat":15}')
    assert welcome.heartbeat == 15.0 and isinstance(welcome.heartbeat, float)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20)


@PROPERTY
@given(output=JSON)
def test_result_round_trips_any_json_output(output: Any) -> None:
    message = Result(1, 0, output)
    assert decode(encode(message)[HEADER.size:]) == message


def test_encode_refuses_frame_above_max_frame() -> None:
    message = Bye("x" * 100)
    assert len(encode(message, max_frame=200)) > 100
    with pytest.raises(ProtocolError, match="exceeds"):
        encode(message, max_frame=50)


BAD_BODIES = {
    # not JSON
    "empty": b"",
    "garbage": b"not json",
    "truncated": b'{"type": "bye"',
    "not utf-8": b'{"type": "bye", "reason": "\xff\xfe"}',
    # not an object
    "array": b"[]",
    "number": b"1",
    "string": b'"bye"',
    "null": b"null",
    # type
    "missing type": b"{}",
    "unknown type": b'{"type": "gimme"}',
    "list type": b'{"type": []}',
    "null type": b'{"type": null}',
    "int type": b'{"type": 1}',
    # fields
    "bool for int": b'{"type": "request-duty", "count": true}',
    "float for int": b'{"type": "ack", "replica_id": 1.0, "accepted": true}',
    "int for bool": b'{"type": "ack", "replica_id": 1, "accepted": 1}',
    "bool for float": b'{"type": "no-work", "retry_after": true}',
    "str for float": b'{"type": "no-work", "retry_after": "2"}',
    "str for list": b'{"type": "heartbeat", "replica_ids": "1,2"}',
    "str in int list": b'{"type": "heartbeat", "replica_ids": [1, "2"]}',
    "null for str": b'{"type": "error", "code": null, "message": "m"}',
    "int for optional str": b'{"type": "ack", "replica_id": 1, "accepted": false, "reason": 5}',
    "assignment not object": b'{"type": "duty", "assignments": [5]}',
    "assignments not list": b'{"type": "duty", "assignments": {}}',
    "assignment missing field": b'{"type": "duty", "assignments": [{"replica_id": 1}]}',
    # missing required fields
    "missing all": b'{"type": "hello"}',
    "missing one": b'{"type": "ack", "replica_id": 1}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_decode_refuses_malformed_frame(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(body)
    assert info.value.data == body


@pytest.mark.parametrize("body", [
    b'{"type": "result", "replica_id": 1, "exit_code": 0, "output": NaN}',
    b'{"type": "result", "replica_id": 1, "exit_code": 0, "output": [-Infinity]}',
    b'{"type": "no-work", "retry_after": Infinity}',
], ids=["NaN", "-Infinity", "Infinity"])
def test_decode_refuses_non_json_constants(body: bytes) -> None:
    # Python's json accepts these, but they are not JSON: encode() cannot send them back,
    # and a citizen's own output check (execute) already refuses them.
    with pytest.raises(ProtocolError) as info:
        decode(body)
    assert info.value.data == body


# --- reading from a stream ------------------------------------------------------------------


def test_frame_split_into_single_bytes() -> None:
    frame = encode(SAMPLES[1])

    async def go() -> Any:
        return await read_message(stream(*(frame[i:i + 1] for i in range(len(frame)))))

    assert run(go) == SAMPLES[1]


def test_two_frames_in_one_chunk() -> None:
    async def go() -> list[Any]:
        reader = stream(encode(Ack(1, True)) + encode(Bye("done")))
        return [await read_message(reader), await read_message(reader)]

    assert run(go) == [Ack(1, True), Bye("done")]


def test_header_payload_and_next_frame_in_one_chunk() -> None:
    payload = bytes(range(256)) * 3

    async def go() -> tuple[Any, bytes, Any]:
        reader = stream(encode(Bundle("ab" * 32, len(payload))) + payload + encode(Bye()))
        header = await read_message(reader)
        return header, await collect(reader, header.size), await read_message(reader)

    assert run(go) == (Bundle("ab" * 32, len(payload)), payload, Bye())


def test_payload_arrives_in_chunks_of_at_most_chunk() -> None:
    payload = b"\x01" * (2 * CHUNK + 5)

    async def go() -> list[bytes]:
        return [c async for c in read_payload(stream(payload), len(payload))]

    chunks = run(go)
    assert b"".join(chunks) == payload
    assert all(len(c) <= CHUNK for c in chunks)


def test_empty_payload_reads_nothing() -> None:
    async def go() -> tuple[bytes, Any]:
        reader = stream(encode(Bye()))
        return await collect(reader, 0), await read_message(reader)

    assert run(go) == (b"", Bye())


def test_negative_payload_size_is_a_protocol_error() -> None:
    # decode accepts Bundle(size=-1); reading its payload must fail as a ProtocolError.
    async def go() -> bytes:
        return await collect(stream(b"abc"), -1)

    with pytest.raises(ProtocolError):
        run(go)


def test_oversized_length_refused_before_reading_body() -> None:
    header, body = HEADER.pack(1000), b"x" * 20

    async def go() -> bytes:
        reader = stream(header, body, eof=False)
        with pytest.raises(ProtocolError, match="exceeds") as info:
            await read_message(reader, max_frame=100)
        assert info.value.data == header
        return await reader.read(100)  # the body is still unread

    assert run(go) == body


def test_eof_between_frames_is_connection_closed() -> None:
    async def go() -> None:
        reader = stream(encode(Bye()))
        assert await read_message(reader) == Bye()
        with pytest.raises(ConnectionClosed):
            await read_message(reader)

    run(go)


def test_eof_on_empty_stream_is_connection_closed() -> None:
    async def go() -> None:
        with pytest.raises(ConnectionClosed):
            await read_message(stream())

    run(go)


@pytest.mark.parametrize("cut", [1, 3], ids=["1 byte", "3 bytes"])
def test_eof_inside_header(cut: int) -> None:
    async def go() -> None:
        with pytest.raises(ProtocolError, match="header") as info:
            await read_message(stream(encode(Bye())[:cut]))
        assert not isinstance(info.value, ConnectionClosed)

    run(go)


def test_eof_inside_body() -> None:
    frame = encode(Bye("reason"))

    async def go() -> None:
        with pytest.raises(ProtocolError, match="inside a frame") as info:
            await read_message(stream(frame[:-3]))
        assert not isinstance(info.value, ConnectionClosed)
        assert info.value.data == frame[HEADER.size:-3]

    run(go)


def test_eof_inside_payload() -> None:
    async def go() -> None:
        reader = stream(encode(Bundle("ab" * 32, 100)) + b"x" * 40)
        header = await read_message(reader)
        with pytest.raises(ProtocolError, match="payload") as info:
            await collect(reader, header.size)
        assert not isinstance(info.value, ConnectionClosed)

    run(go)


def test_malformed_frame_on_stream_is_protocol_error() -> None:
    body = b'{"type": "nope"}'

    async def go() -> None:
        with pytest.raises(ProtocolError) as info:
            await read_message(stream(HEADER.pack(len(body)) + body))
        assert info.value.data == body

    run(go)


# --- parse_address ----------------------------------------------------------------------------


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    ("civic.example:1", ("civic.example", 1)),
    ("127.0.0.1", ("127.0.0.1", DEFAULT_PORT)),
    ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", DEFAULT_PORT)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", [
    "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x", "127.0.0.1:", ":80", "", "127.0.0.1:-1",
    "127.0.0.1:\u00b2",  # superscript two: str.isdigit() says yes, int() says no
])
def test_parse_address_refuses_bad_address(address: str) -> None:
    with pytest.raises(UsageError):
        parse_address(address)


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(body=st.binary(max_size=300))
def test_decode_arbitrary_bytes_only_raises_protocol_error(body: bytes) -> None:
    try:
        message = decode(body)
    except ProtocolError:
        return
    assert type(message) in MESSAGES.values()


def _field_names(kind: str) -> list[str]:
    return list(MESSAGES[kind].__dataclass_fields__) + ["assignments", "extra"]


@st.composite
def json_frames(draw: st.DrawFn) -> bytes:
    """JSON objects with a real message type and fields drawn from real field names."""
    kind = draw(st.sampled_from(sorted(MESSAGES)))
    names = _field_names(kind) + list(Assignment.__dataclass_fields__)
    values = JSON | st.lists(st.dictionaries(st.sampled_from(names), JSON, max_size=10), max_size=2)
    data = draw(st.dictionaries(st.sampled_from(_field_names(kind)), values, max_size=8))
    return json.dumps({"type": kind, **data}).encode()


@PROPERTY
@given(body=json_frames())
def test_decode_typed_json_only_raises_protocol_error(body: bytes) -> None:
    try:
        message = decode(body)
    except ProtocolError:
        return
    assert type(message) in MESSAGES.values()


STREAMS = st.lists(
    st.binary(max_size=20)
    | st.sampled_from(SAMPLES).map(encode)
    | json_frames().map(lambda body: HEADER.pack(len(body)) + body),
    max_size=5).map(b"".join)


@PROPERTY
@given(data=st.binary(max_size=300) | STREAMS)
def test_reading_arbitrary_stream_ends_only_in_protocol_error(data: bytes) -> None:
    async def go() -> BaseException:
        reader = stream(data)
        while True:
            try:
                await read_message(reader)
            except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
                return exc

    assert isinstance(run(go), ProtocolError)
