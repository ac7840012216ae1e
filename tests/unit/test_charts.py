"""The results page's summaries (bins, samples, counts, fields) and the Chart.js configurations."""

from __future__ import annotations

import json

from civic.store import history
from civic.web import charts


def _check(values: list, h: dict) -> None:
    """Every number in exactly one bin, by the rule the page states."""
    edges, counts = h["edges"], h["counts"]
    numbers = [v for v in values if history.is_number(v)]
    assert counts == [sum(1 for v in numbers if a <= v < b or (i == len(counts) - 1 and v == b))
                      for i, (a, b) in enumerate(zip(edges, edges[1:]))]
    assert sum(counts) == h["values"] == len(numbers)


def test_histogram_bins() -> None:
    for values in ([1, 2, 2, 3, 9], list(range(1000)), [0.1 * i for i in range(77)],
                   [5, 5, 5], [2.5], [-3, 7.25, None, "x", True, 1e6]):
        h = history.histogram(values)
        _check(values, h)
    few = history.histogram([1, 2, 2, 3, 9])
    assert few["edges"] == list(range(1, 11)) and few["counts"][1] == 2  # one bin per integer
    assert len(history.histogram(list(range(1000)))["counts"]) == history.BINS
    assert history.histogram([None, True, "a"]) == {"edges": [], "counts": [], "values": 0,
                                                     "skipped": 3}


def test_scatter_samples_evenly() -> None:
    rows = [{"x": i, "y": i * i} for i in range(history.POINTS * 3)] + [{"x": "no", "y": 1}]
    s = history.scatter(rows, "x", "y")
    assert s["total"] == history.POINTS * 3 and s["sampled"]
    assert len(s["points"]) == history.POINTS and s["points"][:2] == [[0, 0], [3, 9]]
    assert history.scatter(rows[:10], "x", "y")["points"] == [[i, i * i] for i in range(10)]


def test_fields_and_counts() -> None:
    rows = [{"duty": 1, "record": 0, "a": 1, "b": "x", "c": None, "d": 1},
            {"duty": 1, "record": 1, "a": 2.5, "b": "y", "c": None, "d": "z"}]
    assert history._fields(rows) == [
        {"name": "duty", "numeric": True}, {"name": "record", "numeric": True},
        {"name": "a", "numeric": True}, {"name": "b", "numeric": False},
        {"name": "c", "numeric": False}, {"name": "d", "numeric": False}]
    c = history.counts(["a", "b", "a", None, {"k": 1}, 3])
    assert c["values"][0] == "a" and c["counts"][0] == 2 and c["distinct"] == 5
    assert '{"k": 1}' in c["values"] and "3" in c["values"]


def test_choose_prefers_the_models_own_fields() -> None:
    fields = history._fields([{"duty": 1, "record": 0, "letter": "b", "n": 3}])
    assert history._choose(fields, None, None, None) == ("histogram", "n", None)
    assert history._choose(fields, "scatter", None, None) == ("scatter", "record", "n")
    letters = history._fields([{"duty": 1, "record": 0, "letter": "b"}])
    assert history._choose(letters, None, None, None) == ("table", None, None)
    assert history._choose(letters, "histogram", None, None) == ("histogram", "letter", None)
    assert history._choose(letters, None, "letter", None) == ("histogram", "letter", None)


def test_chart_configs_are_json_and_label_what_they_draw() -> None:
    h = history.histogram([1, 2, 2, 3])
    config = charts.histogram("<b>n</b>", h)
    assert json.loads(json.dumps(config)) == config
    assert config["data"]["labels"] == ["1", "2", "3"]
    assert config["data"]["datasets"][0]["data"] == [1, 2, 1]
    wide = charts.histogram("x", history.histogram([0.0, 10.0]))
    assert wide["data"]["labels"][0] == "0 – 0.5"
    sc = charts.scatter("a", "b", {"points": [[1, 2]], "total": 1, "sampled": False})
    assert sc["data"]["datasets"][0]["data"] == [{"x": 1, "y": 2}]
    history_data = {"span": "hour", "step": "1 minute",
                    "buckets": ["2026-11-27T12:00:00+00:00", "2026-11-27T12:01:00+00:00"],
                    "models": [{"name": "m", "done": [1, 2], "failed_duties": [0, 0],
                                "failed_replicas": [0, 1], "lost_replicas": [1, 0]}]}
    line = charts.throughput(history_data)
    assert line["data"]["labels"] == ["12:00", "12:01"]
    assert line["data"]["datasets"][0]["data"] == [1, 2]
    bars = charts.failures(history_data)
    assert [d["data"] for d in bars["data"]["datasets"]] == [[0, 1], [1, 0], [0, 0]]
