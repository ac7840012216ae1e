"""``civic status``: the project at a glance — per model and dataset progress, rate and time
left, what waiting duties wait for, citizens and volunteers, errors of the last day, and the
servers on the database; ``--watch`` redraws it live.

The data comes from ``civic.store.monitor.status``; ``render_status`` turns it into one rich
renderable, so the console and the dashboard show the same figures."""

from __future__ import annotations

import json as jsonlib
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from civic.cli.context import Context
from civic.errors import StoreError
from civic.store import monitor

CITIZEN_ROWS = 20  # citizens listed in the table; --json and `civic citizen list` have all
MIN_REDRAW = 1.0  # seconds between two redraws, however often the database signals (a page
# costs ~0.3 s of database time at 10^6 duties: benchmarks/STATUS.md)


def status(ctx: typer.Context,
           json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
           watch: Annotated[bool, typer.Option(
               "--watch", "-w", help="Redraw live until Ctrl-C (a new snapshot each interval "
                                     "when not on a terminal).")] = False,
           interval: Annotated[float, typer.Option(
               "--interval", min=0.1, help="Seconds between redraws at most, with --watch "
                                           "(sooner when the database signals a change, but "
                                           "at most once a second on a terminal).")] = 2.0,
           ) -> None:
    """Show progress, rate and time left per model and dataset, citizens and volunteers,
    errors of the last 24 hours, and the servers on the database."""
    c: Context = ctx.obj
    url = c.database_url()
    if not watch:
        data = monitor.status(url)
        if json:
            c.print_json(data)
        else:
            c.out.print(render_status(data))
        return
    said = ""
    try:
        while True:
            try:
                with monitor.changes(url) as wait:
                    if json or not c.out.is_terminal:
                        _snapshots(c, url, wait, interval, json)
                    else:
                        _live(c, url, wait, interval)
            except StoreError as exc:  # a watch outlives a database restart
                message = " ".join(str(exc).split())
                if message != said:  # once, not every second of an outage
                    c.note(f"{message}; trying again every {max(interval, 1.0):g}s")
                    said = message
                time.sleep(max(interval, 1.0))
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends: exit 0


def _live(c: Context, url: str, wait: Any, interval: float) -> None:
    with Live(render_status(monitor.status(url)), console=c.out, auto_refresh=False,
              vertical_overflow="crop") as live:
        while True:
            started = time.monotonic()
            wait(interval)
            time.sleep(max(0.0, MIN_REDRAW - (time.monotonic() - started)))
            live.update(render_status(monitor.status(url)), refresh=True)


def _snapshots(c: Context, url: str, wait: Any, interval: float, json: bool) -> None:
    """A fresh snapshot each interval (a JSON document per line with --json)."""
    while True:
        data = monitor.status(url)
        if json:
            c.out.file.write(jsonlib.dumps(data) + "\n")
        else:
            c.out.rule(f"civic status {_clock(data['at'])}")
            c.out.print(render_status(data))
        c.out.file.flush()
        started = time.monotonic()
        while time.monotonic() - started < interval:  # signals do not hurry a log
            wait(interval - (time.monotonic() - started))


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def render_status(data: dict[str, Any]) -> RenderableType:
    """The status page of ``monitor.status`` as one rich renderable."""
    parts: list[RenderableType] = [_headline(data)]
    if not data["datasets"]:
        parts.append(Text("no datasets yet"))
    else:
        # The models table says more than the datasets table only when a model has several.
        if len(data["models"]) != len(data["datasets"]) \
                or any(m["datasets"] != 1 for m in data["models"]):
            parts.append(_models(data["models"]))
        parts.append(_datasets(data["datasets"]))
        for d in data["datasets"]:
            for w in d["waiting"]:
                parts.append(Text(f"dataset {d['id']}: {w['duties']} duties wait: {w['reason']}"))
    parts.append(_people(data["people"]))
    if data["errors"]:
        parts.append(_errors(data["errors"], data["error_hours"]))
    parts.append(_servers(data["servers"]))
    if data["citizens"]:
        parts.append(_citizens(data["citizens"]))
    else:
        parts.append(Text("no citizens seen yet"))
    return Group(*parts)


def _headline(data: dict[str, Any]) -> Text:
    people = data["people"]["citizens"]
    pending = sum(d["pending"] for d in data["datasets"])
    return Text(f"CIVIC at {_clock(data['at'])} — {len(data['servers'])} server(s), "
                f"{people['connected']} citizen(s) connected, {pending} duties pending",
                style="bold")


def _flags(row: dict[str, Any]) -> str:
    flags = []
    if row.get("cancelled_at"):
        flags.append("cancelled")
    if row.get("paused_at"):
        flags.append("paused")
    if row.get("model_paused_at"):
        flags.append("model paused")
    return ", ".join(flags) or "-"


def _models(models: list[dict[str, Any]]) -> Table:
    return _table("models", [
        ("model", [f"{m['name']} v{m['version']}" for m in models], False),
        ("state", ["paused" if m["paused"] else "-" for m in models], True),
        ("datasets", [str(m["datasets"]) for m in models], False),
        *_figures(models),
    ])


def _datasets(datasets: list[dict[str, Any]]) -> Table:
    def oldest(d: dict[str, Any]) -> str:
        return ("-" if d["oldest_waiting_duty"] is None else
                f"{_age(d['oldest_waiting_seconds'])} #{d['oldest_waiting_duty']}")

    def progress(d: dict[str, Any]) -> str:
        finished = d["done"] + d["failed"] + d["inconclusive"] + d["cancelled"]
        return f"{100 * finished / d['duties']:.0f}%" if d["duties"] else "-"

    return _table("datasets", [
        ("dataset", [str(d["id"]) for d in datasets], False),
        ("model", [f"{d['model']} v{d['model_version']}" for d in datasets], False),
        ("state", [_flags(d) for d in datasets], True),
        ("progress", [progress(d) for d in datasets], False),
        *_figures(datasets),
        ("oldest waiting", [oldest(d) for d in datasets], False),
    ])


def _figures(rows: list[dict[str, Any]]) -> list[tuple[str, list[str], bool]]:
    """The columns models and datasets share: duties by state (inconclusive and cancelled only
    when some row has any), done in the last minute / hour, rate and time left."""
    return [
        ("duties", [str(r["duties"]) for r in rows], False),
        ("done", [str(r["done"]) for r in rows], False),
        ("pending", [str(r["pending"]) for r in rows], False),
        ("failed", [str(r["failed"]) for r in rows], False),
        ("inconclusive", [str(r["inconclusive"]) for r in rows], True),
        ("cancelled", [str(r["cancelled"]) for r in rows], True),
        ("done 1m/1h", [f"{r['done_last_minute']}/{r['done_last_hour']}" for r in rows], False),
        ("rate", [_rate(r["rate"]) for r in rows], False),
        ("time left", [_eta(r) for r in rows], False),
    ]


def _people(people: dict[str, Any]) -> Text:
    c, v = people["citizens"], people["volunteers"]
    return Text(f"citizens: {c['connected']} connected, {c['active_24h']} active in 24 h, "
                f"{c['resting']} resting, {c['blocked']} blocked ({c['total']} seen)\n"
                f"volunteers: {v['connected']} connected, {v['active_24h']} active in 24 h, "
                f"{v['blocked']} blocked ({v['total']} in all, {v['removed']} removed)")


def _errors(errors: list[dict[str, Any]], hours: int) -> Table:
    return _table(f"errors, last {hours} h", [
        ("model", [f"{e['model']} v{e['model_version']}" for e in errors], False),
        ("error", [e["class"] for e in errors], False),
        ("count", [str(e["count"]) for e in errors], False),
        ("last", [_clock(e["last_at"]) for e in errors], False),
        ("example", [_short(e["example"], 60) for e in errors], False),
    ])


def _servers(servers: list[dict[str, Any]]) -> RenderableType:
    if not servers:
        return Text("servers: none reported in the last "
                    f"{monitor.SERVER_SEEN_WITHIN:.0f} s")
    return _table("servers", [
        ("server", [s["address"] for s in servers], False),
        ("host", [s["hostname"] for s in servers], False),
        ("pid", [str(s["pid"]) for s in servers], False),
        ("state", ["draining" if s["draining"] else "serving" for s in servers], False),
        ("citizens", [str(s["connections"]) for s in servers], False),
        ("leased", [str(s["leased"]) for s in servers], False),
        ("results", [str(s["results"]) for s in servers], False),
        ("up", [_age(s["uptime"]) for s in servers], False),
        ("seen", [f"{_age(s['seen_ago'])} ago" for s in servers], False),
    ])


def _citizens(citizens: list[dict[str, Any]]) -> RenderableType:
    # Connected ones first, then the most recently seen.
    shown = sorted(citizens, key=lambda r: (not r["connected_now"], r["seen_ago"]))
    shown = shown[:CITIZEN_ROWS]
    table = _table("citizens", [
        ("citizen", [r["name"] for r in shown], False),
        ("id", [str(r["id"])[:8] for r in shown], False),
        ("volunteer", [r["volunteer"] for r in shown], False),
        ("connected", ["yes" if r["connected_now"] else "no" for r in shown], False),
        ("last seen", [f"{_age(r['seen_ago'])} ago" for r in shown], False),
        ("leased", [str(r["leased"]) for r in shown], False),
        ("valid", [str(r["valid_count"]) for r in shown], False),
        ("invalid", [str(r["invalid_count"]) for r in shown], False),
        ("errors", [str(r["error_count"]) for r in shown], False),
        ("resting", [f"{_age(r['resting_for'])} more" if r["resting_for"] else "-"
                     for r in shown], True),
        ("blocked", ["yes" if r["blocked_at"] else "-" for r in shown], True),
    ])
    if len(citizens) <= CITIZEN_ROWS:
        return table
    return Group(table, Text(f"… and {len(citizens) - CITIZEN_ROWS} more citizens: "
                             "civic citizen list"))


def _table(title: str, columns: list[tuple[str, list[Any], bool]]) -> Table:
    """A table without rules between columns, as a status page has many to fit, from
    (header, cells, optional) columns: an optional one shows only when some cell says more
    than 0 or -."""
    shown = [(h, cells) for h, cells, optional in columns
             if not optional or any(str(v) not in ("0", "-") for v in cells)]
    table = Table(*(h for h, _ in shown), title=title, title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), pad_edge=False)
    for row in zip(*(cells for _, cells in shown)):
        table.add_row(*row)
    return table


def _rate(rate: float | None) -> str:
    if not rate:
        return "-"
    return f"{rate:.1f}/s" if rate >= 1 else f"{rate * 60:.1f}/min"


def _eta(row: dict[str, Any]) -> str:
    if not row["pending"]:
        return "-"
    if row.get("paused") or row["eta_seconds"] is None and row.get("waits_for_operator"):
        return "paused"
    return _age(row["eta_seconds"])


def _age(seconds: float | None) -> str:
    """A duration as a person reads it: 42s, 3m 05s, 2h 10m, 3d 4h."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _clock(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"
