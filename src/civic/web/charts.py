"""Chart.js configurations, built here from the store's data and embedded in pages as JSON
(``{{ config|tojson }}``): the browser draws them as they are (static/civic.js), so what a
chart shows is decided, and tested, in Python."""

from __future__ import annotations

from datetime import datetime
from typing import Any

# A few distinguishable colours, reused in turn (one per model).
COLOURS = ("#2d5fa8", "#2f8f5b", "#b7791f", "#8e44ad", "#c8443a", "#16a085", "#6b7585")
BAD = ("#c8443a", "#e39a93")  # failed, lost


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _labels(buckets: list[str], span: str) -> list[str]:
    """Bucket starts as people read them: 14:05 within an hour or a day, 11-27 14:00 within a
    week (in the database's time zone, as it gave them)."""
    times = [datetime.fromisoformat(b) for b in buckets]
    return [t.strftime("%m-%d %H:%M" if span == "week" else "%H:%M") for t in times]


def _axes(x: str, y: str, *, stacked: bool = False, integer: bool = True) -> dict[str, Any]:
    return {"x": {"stacked": stacked, "title": {"display": True, "text": x}},
            "y": {"stacked": stacked, "beginAtZero": True,
                  "title": {"display": True, "text": y},
                  **({"ticks": {"precision": 0}} if integer else {})}}


def throughput(history: dict[str, Any]) -> dict[str, Any]:
    """Duties done per interval, one line per model."""
    per = "minute" if history["step"] == "1 minute" else "hour"
    return {
        "type": "line",
        "data": {"labels": _labels(history["buckets"], history["span"]), "datasets": [
            {"label": m["name"], "data": m["done"], "borderColor": _colour(i),
             "backgroundColor": _colour(i), "pointRadius": 0, "tension": 0.2, "borderWidth": 2}
            for i, m in enumerate(history["models"])]},
        "options": {"interaction": {"mode": "index", "intersect": False},
                    "scales": _axes("", f"duties done per {per}")},
    }


def failures(history: dict[str, Any]) -> dict[str, Any]:
    """Replicas failed (an error) and lost (deadline passed, citizen gone) per interval, stacked,
    per model; and duties that failed for good."""
    per = "minute" if history["step"] == "1 minute" else "hour"
    datasets = []
    for m in history["models"]:
        datasets += [
            {"label": f"{m['name']}: replicas failed", "data": m["failed_replicas"],
             "backgroundColor": BAD[0], "stack": m["name"]},
            {"label": f"{m['name']}: replicas lost", "data": m["lost_replicas"],
             "backgroundColor": BAD[1], "stack": m["name"]},
            {"label": f"{m['name']}: duties failed", "data": m["failed_duties"],
             "backgroundColor": "#1d2430", "stack": m["name"]},
        ]
    return {"type": "bar",
            "data": {"labels": _labels(history["buckets"], history["span"]),
                     "datasets": datasets},
            "options": {"scales": _axes("", f"per {per}", stacked=True)}}


def _number(value: float) -> str:
    return f"{value:.4g}"


def histogram(field: str, data: dict[str, Any]) -> dict[str, Any]:
    """Bins as adjacent bars labelled with their range (a single integer for unit bins)."""
    edges = data["edges"]
    unit = all(isinstance(e, int) for e in edges) and all(
        b - a == 1 for a, b in zip(edges, edges[1:]))
    labels = ([str(a) for a in edges[:-1]] if unit else
              [f"{_number(a)} – {_number(b)}" for a, b in zip(edges, edges[1:])])
    return {"type": "bar",
            "data": {"labels": labels, "datasets": [
                {"label": field, "data": data["counts"], "backgroundColor": COLOURS[0],
                 "barPercentage": 1.0, "categoryPercentage": 1.0}]},
            "options": {"plugins": {"legend": {"display": False}},
                        "scales": _axes(field, "rows")}}


def counts(field: str, data: dict[str, Any]) -> dict[str, Any]:
    """How often each value of a categorical field occurs, as horizontal bars, most first."""
    return {"type": "bar",
            "data": {"labels": ["(none)" if v is None else v for v in data["values"]],
                     "datasets": [{"label": field, "data": data["counts"],
                                   "backgroundColor": COLOURS[1]}]},
            "options": {"indexAxis": "y", "plugins": {"legend": {"display": False}},
                        "scales": {"x": {"beginAtZero": True, "ticks": {"precision": 0},
                                         "title": {"display": True, "text": "rows"}},
                                   "y": {"title": {"display": True, "text": field}}}}}


def scatter(x: str, y: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "scatter",
            "data": {"datasets": [{"label": f"{y} against {x}",
                                   "data": [{"x": a, "y": b} for a, b in data["points"]],
                                   "backgroundColor": COLOURS[0], "pointRadius": 2}]},
            "options": {"plugins": {"legend": {"display": False}},
                        "scales": {"x": {"type": "linear", "title": {"display": True, "text": x}},
                                   "y": {"type": "linear",
                                         "title": {"display": True, "text": y}}}}}
