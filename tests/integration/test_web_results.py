"""A model's results page (histogram, scatter, value counts, table) and its downloads, against a
real PostgreSQL."""

from __future__ import annotations

import asyncio
import html
import io
import json
import re
import urllib.parse
from pathlib import Path

import pytest
from webkit import Client, dashboard

from civic.store import catalog, history
from civic.web import results as web_results

XSS = "<script>alert(1)</script>"


def squares_output(assignment) -> list[dict]:
    """A numeric model's output: each record's number, its square and root, and its parity."""
    out = []
    for r in assignment.input:
        n = int(r["n"])
        out.append({"n": n, "square": n * n, "root": n ** 0.5,
                    "parity": "even" if n % 2 == 0 else "odd"})
    return out


@pytest.fixture
def squares(database_url: str, model_copy, tmp_path: Path, h) -> catalog.DatasetImported:
    """300 numbers (10 a duty) of a model named squares, settled with squares_output."""
    catalog.add_model(database_url, model_copy(name="squares"))
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("n\n" + "".join(f"{n}\n" for n in range(1, 301)))
    dataset = catalog.import_dataset(database_url, "squares", numbers, records_per_duty=10)
    asyncio.run(h.settle_all(database_url, output=squares_output))
    return dataset


def _rows(url: str, dataset_id: int) -> list[dict]:
    return list(catalog.result_rows(url, dataset_id))


def _chart(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="chart-results">(.*?)</script>',
                      page, re.S)
    assert found, "the page has no chart"
    return json.loads(found.group(1))


def test_histogram_bins_equal_counts_from_the_rows(database_url: str, squares) -> None:
    rows = _rows(database_url, squares.id)
    with dashboard(database_url) as base:
        web = Client(base)
        data = web.json("/models/squares/results?x=square&chart=histogram")
        page = web.get("/models/squares/results?x=square&chart=histogram")
    hist = data["histogram"]
    edges, counts = hist["edges"], hist["counts"]
    assert len(counts) == history.BINS == len(edges) - 1
    values = [r["square"] for r in rows]
    expected = [sum(1 for v in values if a <= v < b or (i == len(counts) - 1 and v == b))
                for i, (a, b) in enumerate(zip(edges, edges[1:]))]
    assert counts == expected and sum(counts) == 300 == hist["values"]
    assert (edges[0], edges[-1]) == (1, 90000)
    assert data["dataset"] == squares.id and data["cut"] is False
    assert page.status == 200 and 'data-chart="chart-results"' in page.text
    config = _chart(page.text)
    assert config["type"] == "bar" and config["data"]["datasets"][0]["data"] == counts


def test_default_is_a_histogram_of_the_first_numeric_field(database_url: str, squares) -> None:
    with dashboard(database_url) as base:
        data = Client(base).json("/models/squares/results")
    assert (data["chart"], data["x"]) == ("histogram", "n")
    fields = {f["name"]: f["numeric"] for f in data["fields"]}
    assert fields == {"duty": True, "record": True, "n": True, "square": True, "root": True,
                      "parity": False}
    # 300 distinct integers: 20 bins of 14.95 each, every number in exactly one.
    assert sum(data["histogram"]["counts"]) == 300


def test_histogram_reads_a_bounded_number_of_rows_and_says_so(
        database_url: str, squares, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "ROWS", 120)
    rows = _rows(database_url, squares.id)[:120]
    with dashboard(database_url) as base:
        web = Client(base)
        data = web.json("/models/squares/results?x=n")
        page = web.get("/models/squares/results?x=n")
    assert data["cut"] is True and data["rows_read"] == 120
    assert data["histogram"]["values"] == 120
    assert data["histogram"]["edges"][0] == min(r["n"] for r in rows)
    assert "Computed over the first 120 result rows only" in page.text


def test_scatter_is_sampled_evenly_and_bounded(database_url: str, squares,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "POINTS", 50)
    rows = _rows(database_url, squares.id)
    with dashboard(database_url) as base:
        web = Client(base)
        data = web.json("/models/squares/results?chart=scatter&x=n&y=root")
        page = web.get("/models/squares/results?chart=scatter&x=n&y=root")
    s = data["scatter"]
    assert s["total"] == 300 and s["sampled"] is True and len(s["points"]) == 50
    everything = [[r["n"], r["root"]] for r in rows]
    assert s["points"] == everything[::6]  # 300 points, every sixth
    assert "50 points drawn, picked evenly among 300" in page.text
    config = _chart(page.text)
    assert config["type"] == "scatter" and len(config["data"]["datasets"][0]["data"]) == 50


def test_table_shows_the_first_rows(database_url: str, squares) -> None:
    rows = _rows(database_url, squares.id)
    with dashboard(database_url) as base:
        web = Client(base)
        data = web.json("/models/squares/results?chart=table")
        page = web.get("/models/squares/results?chart=table")
    t = data["table"]
    assert t["columns"] == ["duty", "record", "n", "square", "root", "parity"]
    assert t["rows"] == [[r[c] for c in t["columns"]] for r in rows[:history.TABLE]]
    assert t["cut"] is True
    assert page.status == 200 and "<td>odd</td>" in page.text
    assert "Only the first 100 rows are shown here" in page.text


def test_alphabet_letters_get_value_counts_and_a_table(database_url: str, alphabet, h) -> None:
    asyncio.run(h.settle_all(database_url))
    with dashboard(database_url) as base:
        web = Client(base)
        table = web.json("/models/alphabet/results")
        page = web.get("/models/alphabet/results")
        data = web.json("/models/alphabet/results?x=original_letter")
        counted = web.get("/models/alphabet/results?x=letter&chart=histogram")
    assert table["chart"] == "table" and len(table["table"]["rows"]) == 26
    assert table["table"]["columns"] == ["duty", "record", "original_letter", "letter"]
    assert "<td>a</td>" in page.text and "<td>b</td>" in page.text
    assert data["chart"] == "histogram" and data["x"] == "original_letter"
    assert sorted(data["counts"]["values"]) == list("abcdefghijklmnopqrstuvwxyz")
    assert data["counts"]["counts"] == [1] * 26 and data["counts"]["others"] == 0
    assert _chart(counted.text)["options"]["indexAxis"] == "y"
    assert "26 distinct values" in counted.text


def test_a_dataset_can_be_picked_and_the_default_has_results(database_url: str, squares,
                                                             model_copy) -> None:
    later = catalog.import_dataset(database_url, "squares", Path(model_copy()) / "letters.csv",
                                   again=True)
    with dashboard(database_url) as base:
        web = Client(base)
        default = web.json("/models/squares/results")
        empty = web.json(f"/models/squares/results?dataset={later.id}")
        page = web.get(f"/models/squares/results?dataset={later.id}")
    assert default["dataset"] == squares.id  # the latest with results, not the latest
    assert [d["id"] for d in default["datasets"]] == [later.id, squares.id]
    assert empty["dataset"] == later.id and empty["done_duties"] == 0
    assert "No result yet" in page.text


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_downloads_equal_the_export(database_url: str, squares, fmt: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_results, "CHUNK", 500)  # many chunks, so the streaming is exercised
    expected = io.StringIO()
    catalog.export_results(database_url, squares.id, fmt, expected)
    with dashboard(database_url) as base:
        web = Client(base)
        got = web.get(f"/models/squares/results.{fmt}?dataset={squares.id}")
        default = web.get(f"/models/squares/results.{fmt}")
    assert got.status == 200 and got.text == expected.getvalue() == default.text
    assert len(got.text) > 10 * 500
    assert got.headers["Content-Disposition"] == \
        f'attachment; filename="squares-dataset-{squares.id}.{fmt}"'
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["Content-Type"].startswith(
        "text/csv" if fmt == "csv" else "application/x-ndjson")


def test_unknown_model_or_dataset_is_404(database_url: str, squares, alphabet) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        for path in ("/models/nope/results", "/models/nope/results.csv",
                     "/models/nope/results.jsonl",
                     f"/models/squares/results?dataset={alphabet.id}",
                     f"/models/squares/results.csv?dataset={alphabet.id}"):
            reply = web.get(path)
            assert reply.status == 404, path
            assert "Traceback" not in reply.text
        assert "no model named 'nope'" in web.get("/models/nope/results?format=json").json()["error"]


def test_bad_requests_are_400_with_a_message(database_url: str, squares) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        cases = {
            "?x=nope": "have no field 'nope'",
            "?chart=scatter&x=n&y=parity": "'parity' is not numeric",
            "?chart=pie": "chart must be one of histogram, scatter, table",
            "?dataset=abc": "dataset must be a dataset id",
        }
        for query, message in cases.items():
            page = web.get("/models/squares/results" + query)
            assert page.status == 400 and message in html.unescape(page.text), query
            reply = web.get("/models/squares/results" + query + "&format=json")
            assert reply.status == 400 and message in reply.json()["error"], query
        assert web.get("/models/squares/results.csv?dataset=abc").status == 400


def test_results_page_escapes_what_a_model_wrote(database_url: str, alphabet, h) -> None:
    asyncio.run(h.settle_all(database_url, output=lambda a: [{XSS: XSS, "v": 1}]))
    with dashboard(database_url) as base:
        web = Client(base)
        pages = [web.get("/models/alphabet/results?chart=table"),
                 web.get("/models/alphabet/results"),
                 web.get("/models/alphabet/results?x=" + urllib.parse.quote(XSS)),
                 web.get("/models/alphabet/results?chart=histogram&x=v")]
        data = web.json("/models/alphabet/results?x=" + urllib.parse.quote(XSS))
    for page in pages:
        assert page.status == 200
        assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0].text
    assert data["x"] == XSS and data["counts"]["values"] == [XSS]
    assert _chart(pages[2].text)["data"]["labels"] == [XSS]  # as text, once parsed


def test_a_reader_that_leaves_frees_its_download(database_url: str, model_copy, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, h) -> None:
    import http.client

    catalog.add_model(database_url, model_copy(name="squares"))
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("n\n" + "".join(f"{n}\n" for n in range(1, 40_001)))
    dataset = catalog.import_dataset(database_url, "squares", numbers, records_per_duty=2000)
    asyncio.run(h.settle_all(database_url, output=squares_output))
    monkeypatch.setattr(web_results, "DOWNLOADS", 1)  # one slot: a leaked one stops the next
    monkeypatch.setattr(web_results, "CHUNK", 1000)
    expected = io.StringIO()
    catalog.export_results(database_url, dataset.id, "jsonl", expected)
    with dashboard(database_url) as base:
        host, port = base.removeprefix("http://").split(":")
        for _ in range(3):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", "/models/squares/results.jsonl")
            reply = conn.getresponse()
            assert reply.status == 200 and reply.read(2000)
            conn.close()  # gone after the first bytes of ~2 MB
        whole = Client(base).get("/models/squares/results.jsonl")
    assert whole.status == 200 and whole.text == expected.getvalue()


def test_the_collatz_example_gives_the_results_page_numbers(database_url: str,
                                                           tmp_path: Path, h) -> None:
    """examples/collatz, its program run for real on each duty's input (no citizen: the program
    itself), charted: the histogram of its steps counts what the program wrote."""
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[2] / "examples" / "collatz"
    catalog.add_model(database_url, example)
    dataset = catalog.import_dataset(database_url, "collatz", example / "numbers.csv")
    written: dict[int, list] = {}

    def run(assignment) -> list:
        if assignment.duty_id not in written:
            source, target = tmp_path / "in.json", tmp_path / "out.json"
            source.write_text(json.dumps(assignment.input))
            subprocess.run([sys.executable, str(example / "collatz.py"), str(source),
                            str(target)], check=True)
            written[assignment.duty_id] = json.loads(target.read_text())
        return written[assignment.duty_id]

    asyncio.run(h.settle_all(database_url, output=run))
    steps = [item["steps"] for output in written.values() for item in output]
    assert len(steps) == 2000 and max(steps) == 181  # n = 1161 takes the most steps below 2001
    with dashboard(database_url) as base:
        web = Client(base)
        data = web.json("/models/collatz/results?x=steps")
        scatter = web.json("/models/collatz/results?chart=scatter&x=n&y=steps")
    assert data["dataset"] == dataset.id and data["histogram"]["values"] == 2000
    edges, counts = data["histogram"]["edges"], data["histogram"]["counts"]
    assert counts == [sum(1 for s in steps if a <= s < b or (i == len(counts) - 1 and s == b))
                      for i, (a, b) in enumerate(zip(edges, edges[1:]))]
    assert scatter["scatter"]["total"] == 2000 and [27, 111] in scatter["scatter"]["points"]


def test_a_model_without_a_dataset_says_so(database_url: str, h) -> None:
    catalog.add_model(database_url, h.ALPHABET)
    with dashboard(database_url) as base:
        web = Client(base)
        page = web.get("/models/alphabet/results")
        data = web.json("/models/alphabet/results")
        download = web.get("/models/alphabet/results.csv")
    assert page.status == 200 and "has no dataset yet" in page.text
    assert data["dataset"] is None and data["datasets"] == []
    assert download.status == 404 and "civic dataset import alphabet FILE" in download.text
