"""What the dashboard's charts draw, as data (synchronous; the web renders these): throughput and
failures over time per model, read from PostgreSQL so that a restart loses nothing, and a
model's canonical results summarised for a histogram, a scatter, value counts or a table.

Every read is bounded: a time window through a partial index, or a fixed number of result rows
(``ROWS``), of which the page says when it was cut. Returns JSON-ready data (monitor.plain).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from contextlib import closing
from itertools import islice
from typing import Any

from psycopg import IsolationLevel
from psycopg.rows import dict_row

from civic.errors import NotFound, UsageError
from civic.store import catalog
from civic.store.db import connect
from civic.store.monitor import plain
from civic.store.queries import q

# span: (bucket, number of buckets); an hour by minute, a day or a week by hour.
SPANS = {"hour": ("1 minute", 60), "day": ("1 hour", 24), "week": ("1 hour", 168)}

ROWS = 100_000  # result rows a histogram or a scatter reads at most
SAMPLE = 1_000  # result rows that tell which fields there are and which are numeric
POINTS = 5_000  # points a scatter draws at most, picked evenly among those read
BINS = 20  # a histogram's bins (fewer for a few distinct integers)
VALUES = 30  # the most frequent values a categorical field's counts show
TABLE = 100  # rows the table shows
DATASETS = 100  # datasets offered on the results page
CHARTS = ("histogram", "scatter", "table")


def throughput(url: str, span: str = "hour") -> dict[str, Any]:
    """Duties finished and replicas failed per interval over ``span`` (hour: per minute over
    the last hour; day, week: per hour), per model name: ``buckets`` (each interval's start)
    and ``models``, each with ``done`` and ``failed`` duties and ``failed`` and ``lost``
    replicas, one count per bucket."""
    if span not in SPANS:
        raise UsageError(f"span must be one of {', '.join(SPANS)}, not {span!r}")
    step, count = SPANS[span]
    with connect(url, row_factory=dict_row) as conn:
        conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
        buckets = [r["at"] for r in conn.execute(
            q("history_window"), {"step": step, "buckets": count}).fetchall()]
        window = {"step": step, "since": buckets[0]}
        duties = conn.execute(q("history_finished"), window).fetchall()
        replicas = conn.execute(q("history_failed_replicas"), window).fetchall()
    index = {at: i for i, at in enumerate(buckets)}
    models: dict[str, dict[str, list[int]]] = {}

    def series(name: str) -> dict[str, list[int]]:
        return models.setdefault(name, {key: [0] * len(buckets) for key in (
            "done", "failed_duties", "failed_replicas", "lost_replicas")})

    for r in duties:
        s = series(r["model"])
        s["done"][index[r["at"]]] = r["done"]
        s["failed_duties"][index[r["at"]]] = r["failed"]
    for r in replicas:
        s = series(r["model"])
        s["failed_replicas"][index[r["at"]]] = r["failed"]
        s["lost_replicas"][index[r["at"]]] = r["lost"]
    return plain({"span": span, "step": step, "buckets": buckets,
                  "models": [{"name": name, **s} for name, s in sorted(models.items())]})


# ---------------------------------------------------------------------------------------------
# A model's results
# ---------------------------------------------------------------------------------------------

def results(url: str, model: str, dataset_id: int | None = None, x: str | None = None,
            y: str | None = None, chart: str | None = None) -> dict[str, Any]:
    """A model's canonical results, ready to draw: the dataset (``dataset_id``, else the latest
    dataset of the latest version having results), its ``fields`` (from the first SAMPLE rows;
    numeric when every value there is a number), the chart asked for or the best one for the
    fields, and its data: ``histogram`` (bins of a numeric field; value ``counts`` of any
    other), ``scatter`` (two numeric fields) or ``table`` (the first TABLE rows). Histograms
    and scatters read at most ROWS rows (``cut`` says when there were more).

    Raises:
        NotFound: no such model, or no such dataset of it.
        UsageError: a field the results lack, a scatter of a non-numeric field, an unknown chart.
    """
    if chart is not None and chart not in CHARTS:
        raise UsageError(f"chart must be one of {', '.join(CHARTS)}, not {chart!r}")
    with connect(url, row_factory=dict_row) as conn:
        datasets, dataset_id = _pick(conn, model, dataset_id)
        done = (conn.execute(q("history_done_duties"), {"dataset_id": dataset_id})
                .fetchone()["done"] if dataset_id is not None else 0)
    page: dict[str, Any] = {"model": model, "dataset": dataset_id, "datasets": datasets,
                            "done_duties": done, "fields": [], "chart": "table", "x": None,
                            "y": None, "limits": {"rows": ROWS, "points": POINTS,
                                                  "table": TABLE}}
    if dataset_id is None or not done:
        page["table"] = {"columns": [], "rows": []}
        return plain(page)
    # One read: the rows a chart draws, of which the first tell the fields (a table needs few).
    rows = _read(url, dataset_id, SAMPLE if chart == "table" else ROWS + 1)
    sample = rows[:SAMPLE]
    fields = _fields(sample)
    page["fields"] = fields
    numeric = [f["name"] for f in fields if f["numeric"]]
    names = [f["name"] for f in fields]
    for value in (x, y):
        if value is not None and value not in names:
            raise UsageError(f"the results of dataset {dataset_id} have no field {value!r} "
                             f"(fields: {', '.join(names)})")
    chart, x, y = _choose(fields, chart, x, y)
    page.update(chart=chart, x=x, y=y)
    if chart == "table":
        rows = sample[:TABLE]
        page["table"] = {"columns": names, "rows": [[r.get(n) for n in names] for r in rows],
                         "cut": len(sample) > TABLE}
        return plain(page)
    cut = len(rows) > ROWS
    rows = rows[:ROWS]
    page["rows_read"], page["cut"] = len(rows), cut
    if chart == "scatter":
        for field in (x, y):
            if field not in numeric:
                raise UsageError(f"a scatter needs numeric fields: {field!r} is not numeric")
        page["scatter"] = scatter(rows, x, y)
    elif x in numeric:
        page["histogram"] = histogram([r.get(x) for r in rows])
    else:
        page["counts"] = counts([r.get(x) for r in rows])
    return plain(page)


def dataset(url: str, model: str, dataset_id: int | None = None) -> int | None:
    """The dataset whose results to show or download: ``dataset_id``, checked to be the
    model's, else the latest dataset of the latest version having results (else its latest
    dataset; None when it has none).

    Raises:
        NotFound: no such model, or no such dataset of it.
    """
    with connect(url, row_factory=dict_row) as conn:
        return _pick(conn, model, dataset_id)[1]


def _pick(conn: Any, model: str, dataset_id: int | None) -> tuple[list[dict[str, Any]],
                                                                  int | None]:
    if conn.execute(q("latest_model"), {"name": model}).fetchone() is None:
        raise NotFound(f"no model named {model!r}")
    datasets = conn.execute(q("history_model_datasets"),
                            {"model": model, "limit": DATASETS}).fetchall()
    if dataset_id is None:
        # Newest first, until one has results (its "has_results" stays unknown past it).
        for d in datasets:
            d["has_results"] = conn.execute(q("history_has_results"),
                                            {"dataset_id": d["id"]}).fetchone()["has_results"]
            if d["has_results"]:
                return datasets, d["id"]
        return datasets, datasets[0]["id"] if datasets else None
    if conn.execute(q("dataset_of_model"), {"model": model, "id": dataset_id}).fetchone() is None:
        raise NotFound(f"model {model!r} has no dataset {dataset_id}")
    return datasets, dataset_id


def _read(url: str, dataset_id: int, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` result rows, as ``civic results export`` writes them (its server-side
    cursor stops where we stop reading)."""
    with closing(catalog.result_rows(url, dataset_id)) as rows:
        return list(islice(rows, limit))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fields(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every field of ``rows`` in first-seen order; numeric when each value present is a
    number (``duty`` and ``record``, the row's place, are numbers too)."""
    seen: dict[str, bool] = {}
    for row in rows:
        for key, value in row.items():
            if value is None:
                seen.setdefault(key, True)
            else:
                seen[key] = seen.get(key, True) and is_number(value)
    present = {k for row in rows for k, v in row.items() if v is not None}
    return [{"name": k, "numeric": numeric and k in present} for k, numeric in seen.items()]


def _choose(fields: list[dict[str, Any]], chart: str | None, x: str | None,
            y: str | None) -> tuple[str, str | None, str | None]:
    """The chart and fields to draw: what was asked for, completed with the first fields that
    fit (a field of the model's output before the row's place, ``duty`` and ``record``); a
    histogram of a field that is not numeric counts its values."""
    own = [f for f in fields if f["name"] not in ("duty", "record")]
    numeric = [f["name"] for f in own if f["numeric"]] + ["record", "duty"]
    other = [f["name"] for f in own if not f["numeric"]]
    if chart is None:  # a table when the model's output has no number (the alphabet's letters)
        chart = ("scatter" if x is not None and y is not None else
                 "histogram" if x is not None or numeric[:-2] else "table")
    if chart == "histogram" and x is None:
        x = (numeric[:-2] or other or numeric)[0]
    if chart == "scatter":
        if x is None:
            x = "record" if y != "record" else numeric[0]
        if y is None:
            y = next((n for n in numeric if n != x), x)
    return chart, x, y


def histogram(values: list[Any]) -> dict[str, Any]:
    """Bins of the numeric ``values`` (others are left out and counted as ``skipped``): ``edges``
    (one more than ``counts``); bin i holds edges[i] <= v < edges[i + 1], the last one its upper
    edge too. A few distinct integers get one bin each."""
    numbers = [v for v in values if is_number(v)]
    skipped = len(values) - len(numbers)
    if not numbers:
        return {"edges": [], "counts": [], "values": 0, "skipped": skipped}
    lo, hi = min(numbers), max(numbers)
    if all(isinstance(v, int) for v in numbers) and hi - lo < BINS:
        edges: list[float] = [lo + i for i in range(hi - lo + 2)]
    elif lo == hi:
        edges = [lo, hi]
    else:
        width = (hi - lo) / BINS
        edges = [lo + i * width for i in range(BINS)] + [hi]
    found = [0] * (len(edges) - 1)
    for v in numbers:
        found[min(bisect_right(edges, v) - 1, len(found) - 1)] += 1
    return {"edges": edges, "counts": found, "values": len(numbers), "skipped": skipped}


def scatter(rows: list[dict[str, Any]], x: str, y: str) -> dict[str, Any]:
    """The rows' (x, y) points where both are numbers, at most POINTS of them picked evenly
    (``total`` says how many there were)."""
    points = [(r.get(x), r.get(y)) for r in rows]
    points = [p for p in points if is_number(p[0]) and is_number(p[1])]
    total = len(points)
    if total > POINTS:
        points = [points[i * total // POINTS] for i in range(POINTS)]
    return {"points": [list(p) for p in points], "total": total, "sampled": total > POINTS}


def counts(values: list[Any]) -> dict[str, Any]:
    """How often each value occurs, the VALUES most frequent first (``others``: the rest)."""
    counted = Counter(v if isinstance(v, str) or v is None else json.dumps(v, ensure_ascii=False)
                      for v in values)
    top = counted.most_common(VALUES)
    return {"values": [v for v, _ in top], "counts": [n for _, n in top],
            "distinct": len(counted), "others": sum(counted.values()) - sum(n for _, n in top)}
