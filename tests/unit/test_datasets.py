"""Tests for civic.datasets: streaming readers, line numbers, errors and cutting into duties."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civic import datasets
from civic.datasets import FORMATS, Record, cut, guess_format, read_records
from civic.errors import CivicError, DatasetError, UsageError


def write(tmp_path: Path, content: str | bytes, name: str = "data") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read(path: Path, fmt: str) -> list[tuple[int, Any]]:
    return [(r.line, r.value) for r in read_records(path, fmt)]


def error(path: Path, fmt: str) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        list(read_records(path, fmt))
    return info.value


# --- csv ---------------------------------------------------------------------------------------


def test_csv_rows_become_dicts_with_start_lines(tmp_path: Path) -> None:
    path = write(tmp_path, 'a,b\n1,2\n\n3,"x\ny"\r\n"q,""r""",\n')
    assert read(path, "csv") == [
        (2, {"a": "1", "b": "2"}),
        (4, {"a": "3", "b": "x\ny"}),
        (6, {"a": 'q,"r"', "b": ""}),
    ]


def test_csv_strips_a_byte_order_mark(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffname\nada\n")
    assert read(path, "csv") == [(2, {"name": "ada"})]


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("a,b,c\n1,2,3\n4,5\n", 3, "expected 3 fields, found 2"),
        ('a,b\n"x\ny",1\n1,2,3\n', 4, "expected 2 fields, found 3"),
        ("a,,b\n1,2,3\n", 1, "empty column name"),
        ("a,b,a\n1,2,3\n", 1, "duplicate column name 'a'"),
        ('a\n1\n"open\n', 3, "invalid CSV"),
        (b"a\n1\n\xff\n", 3, "invalid UTF-8"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, content: str | bytes, line: int, message: str) -> None:
    err = error(write(tmp_path, content), "csv")
    assert err.line == line
    assert message in str(err) and f"line {line}" in str(err)


def test_csv_with_only_a_header_has_no_records(tmp_path: Path) -> None:
    err = error(write(tmp_path, "a,b\n"), "csv")
    assert err.line is None and "no records" in str(err)


# --- json --------------------------------------------------------------------------------------


def test_json_elements_with_start_lines(tmp_path: Path) -> None:
    path = write(tmp_path, '[\n  {"a": [1, 2]},\n  "s", 3.5,\n  null\n]\n')
    assert read(path, "json") == [(2, {"a": [1, 2]}), (3, "s"), (3, 3.5), (4, None)]


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ('{"a": 1}', 1, "expected a JSON array"),
        ("[1,\n2]\nx", 3, "unexpected data after the array"),
        ("[1,\n2\n3]", 3, "expected ',' or ']'"),
        ("[1,\n2,\n]", 3, "invalid JSON"),
        ("[1,\n{oops}]", 2, "invalid JSON"),
        ("[1,\n2", 2, "unexpected end of file"),
        ('[1,\n"abc', 2, "Unterminated string"),
        ("[1,\nNaN]", 2, "NaN is not valid JSON"),
        ("[1,\n1e999]", 2, "too large"),
        (b'[1,\n\n"\xff"]', 3, "invalid UTF-8"),
        ("[" * 100_000, 1, "invalid JSON"),
    ],
)
def test_json_errors_name_the_line(tmp_path: Path, content: str | bytes, line: int, message: str) -> None:
    err = error(write(tmp_path, content), "json")
    assert err.line == line
    assert message in str(err)


@pytest.mark.parametrize("content", ["", "  \n", "[]", "[ \n ]"])
def test_json_without_elements_has_no_records(tmp_path: Path, content: str) -> None:
    assert "no records" in str(error(write(tmp_path, content), "json"))


TRICKY = [
    "a]b,c",
    'quote " and \\ backslash\nnewline',
    [[1, [2, [3]]], []],
    {"]": ",", "k": [{"x": None}]},
    1234567890123456789,
    -0.5e-7,
    True,
    "\u00e9\u4e2d\U0001f600",
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_json_is_correct_across_tiny_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(datasets, "CHUNK", chunk)
    path = write(tmp_path, json.dumps(TRICKY, indent=1, ensure_ascii=False))
    records = list(read_records(path, "json"))
    assert [r.value for r in records] == TRICKY
    assert [r.line for r in records][:3] == [2, 3, 4]


def test_json_streams_a_large_file_in_small_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "CHUNK", 4096)
    path = tmp_path / "big.json"
    with path.open("w") as f:
        f.write("[\n" + ",\n".join(json.dumps({"i": i, "s": "x" * (i % 7)}) for i in range(200_000)) + "\n]\n")
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f: Any) -> None:
            self.f = f

        def read(self, n: int) -> bytes:
            reads.append(n)
            return self.f.read(n)

        def readinto(self, buffer: Any) -> int:
            reads.append(len(buffer))
            return self.f.readinto(buffer)

        def close(self) -> None:
            self.f.close()

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    monkeypatch.setattr(datasets, "open", lambda p, *a, **k: Spy(real_open(p, *a, **k)), raising=False)
    progress: list[int] = []
    count = 0
    for count, record in enumerate(read_records(path, "json", on_bytes=progress.append), 1):
        assert record.value["i"] == count - 1 and record.line == count + 1
    assert count == 200_000
    assert max(reads) <= 8192  # never the whole file at once
    assert progress == sorted(progress) and progress[-1] == os.path.getsize(path)


def test_json_huge_element_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "CHUNK", 64)
    big = ["y" * 100_000, list(range(20_000)), 10**200]
    assert [r.value for r in read_records(write(tmp_path, json.dumps(big)), "json")] == big


# --- jsonl and lines ---------------------------------------------------------------------------


def test_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, '{"a": 1}\n\n  \n[1, 2]\r\n"s"')
    assert read(path, "jsonl") == [(1, {"a": 1}), (4, [1, 2]), (5, "s")]


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ('1\n\n{"a": }\n', 3, "invalid JSON"),
        ("1\n2 3\n", 2, "invalid JSON"),
        ("1\nInfinity\n", 2, "Infinity is not valid JSON"),
        (b"1\n\xc3\n", 2, "invalid UTF-8"),
        ("1\n" + "[" * 100_000 + "\n", 2, "invalid JSON"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, content: str | bytes, line: int, message: str) -> None:
    err = error(write(tmp_path, content), "jsonl")
    assert err.line == line and message in str(err)


def test_lines_keeps_non_empty_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffalpha\r\n\nbeta  \n\r\n gamma")
    assert read(path, "lines") == [(1, "alpha"), (3, "beta  "), (5, " gamma")]


def test_lines_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    assert error(write(tmp_path, b"ok\nbad \xff\n"), "lines").line == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "lines"])
def test_text_formats_report_progress_up_to_the_file_size(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, "\"h\"\n" + "".join(f"{i}\n" for i in range(50_000)))
    progress: list[int] = []
    assert sum(1 for _ in read_records(path, fmt, on_bytes=progress.append)) >= 50_000
    assert len(progress) > 1 and progress == sorted(progress) and progress[-1] == os.path.getsize(path)


# --- files, formats and cutting ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_unreadable_paths_give_dataset_errors_without_a_line(tmp_path: Path, fmt: str) -> None:
    for path in (tmp_path / "missing.csv", tmp_path):
        err = error(path, fmt)
        assert err.line is None and str(path) in str(err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file_has_no_records(tmp_path: Path, fmt: str) -> None:
    assert str(error(write(tmp_path, "\n\n"), fmt)).endswith("no records")


def test_unknown_format_is_a_usage_error_at_once(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="csv, json, jsonl, lines"):
        read_records(tmp_path / "x", "xml")


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.csv", "csv"), ("a.JSON", "json"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("a.txt", "lines"), ("a.lines", "lines")],
)
def test_guess_format(name: str, fmt: str) -> None:
    assert guess_format(Path(name)) == fmt


@pytest.mark.parametrize("name", ["data.xml", "data", "data.csv.gz"])
def test_guess_format_rejects_unknown_extensions(name: str) -> None:
    with pytest.raises(UsageError, match="--format") as info:
        guess_format(Path(name))
    assert name in str(info.value) and "jsonl" in str(info.value)


def test_cut_groups_consecutive_records() -> None:
    records = [Record(i, i) for i in range(1, 8)]
    assert [[r.value for r in duty] for duty in cut(records, 3)] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [len(duty) for duty in cut(iter(records), 1)] == [1] * 7
    assert list(cut(records, 100)) == [records]
    assert list(cut([], 2)) == []


def test_cut_is_lazy() -> None:
    def endless() -> Any:
        n = 0
        while True:
            n += 1
            yield Record(n, n)

    duties = cut(endless(), 2)
    assert [r.value for r in next(duties)] == [1, 2]
    assert [r.value for r in next(duties)] == [3, 4]


@pytest.mark.parametrize("per_duty", [0, -1])
def test_cut_rejects_empty_duties(per_duty: int) -> None:
    with pytest.raises(UsageError):
        cut([], per_duty)


# --- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(
    data=st.binary(max_size=300) | st.text(alphabet='[]{},:"\\ \n\r\t0123456789.eE-+truefalsn\xff', max_size=80).map(str.encode),
    chunk=st.sampled_from([1, 5, 64 * 1024]),
)
def test_any_bytes_give_records_or_a_civic_error(tmp_path: Path, data: bytes, chunk: int) -> None:
    path = write(tmp_path, data)
    for fmt in FORMATS:
        datasets.CHUNK, saved = chunk, datasets.CHUNK
        try:
            records = list(read_records(path, fmt))
            assert records and all(isinstance(r, Record) and r.line >= 1 for r in records)
        except CivicError:
            pass
        finally:
            datasets.CHUNK = saved


@PROPERTY
@given(
    values=st.lists(json_values, min_size=1, max_size=6),
    indent=st.none() | st.integers(0, 3),
    ascii_only=st.booleans(),
    chunk=st.sampled_from([1, 3, 64 * 1024]),
)
def test_json_lists_round_trip(tmp_path: Path, values: list[Any], indent: int | None, ascii_only: bool, chunk: int) -> None:
    saved, datasets.CHUNK = datasets.CHUNK, chunk
    try:
        as_json = write(tmp_path, json.dumps(values, indent=indent, ensure_ascii=ascii_only), "data.json")
        assert [r.value for r in read_records(as_json, "json")] == values
        lines = "\n".join(json.dumps(v, ensure_ascii=ascii_only) for v in values)
        as_jsonl = write(tmp_path, lines, "data.jsonl")
        assert read(as_jsonl, "jsonl") == list(enumerate(values, 1))
    finally:
        datasets.CHUNK = saved


@PROPERTY
@given(
    text=st.text(alphabet='[]{},:"\\ \n\t0123456789.eE-+truefalsnNI\u00e9', max_size=60),
    chunk=st.integers(1, 9),
)
def test_json_agrees_with_json_loads_at_any_chunk_size(tmp_path: Path, text: str, chunk: int) -> None:
    try:
        expected = json.loads(text, parse_constant=datasets._not_json, parse_float=datasets._finite)
    except (ValueError, RecursionError):
        expected = None
    saved, datasets.CHUNK = datasets.CHUNK, chunk
    try:
        path = write(tmp_path, text)
        if isinstance(expected, list) and expected:
            assert [r.value for r in read_records(path, "json")] == expected
        else:
            with pytest.raises(DatasetError):
                list(read_records(path, "json"))
    finally:
        datasets.CHUNK = saved
