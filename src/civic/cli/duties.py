"""``civic duty show ID``: one duty — its input, every replica, its canonical result, and why
it waits when it does. (``civic duty retry`` lives in ``retry.py``.)"""

from __future__ import annotations

import json as jsonlib
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from civic.cli.context import Context
from civic.store import monitor

app = typer.Typer(no_args_is_help=True, help="Look at one duty, or retry failed ones.")

INPUT_CHARS = 400  # of the input and the canonical result shown on a terminal (all in --json)
STDERR_LINES = 5  # lines of each replica's stderr tail shown


@app.command("show")
def show(ctx: typer.Context,
         duty_id: Annotated[int, typer.Argument(metavar="ID", help="The duty's id.")],
         json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
         ) -> None:
    """A duty's dataset, model, state and input, every replica (citizen, volunteer, host,
    times, exit code, output digest, error, stderr tail), its canonical result, and why no
    citizen takes it when it waits."""
    c: Context = ctx.obj
    data = monitor.duty(c.database_url(), duty_id)
    if json:
        c.print_json(data)
    else:
        c.out.print(render_duty(data))


def render_duty(d: dict[str, Any]) -> RenderableType:
    """A duty of ``monitor.duty`` as one rich renderable."""
    flags = [f for f, on in (("dataset cancelled", d["dataset_cancelled_at"]),
                             ("dataset paused", d["dataset_paused_at"]),
                             ("model paused", d["model_paused_at"])) if on]
    head = Text.assemble(
        (f"duty {d['id']}", "bold"), f" of dataset {d['dataset_id']}, "
        f"model {d['model']} v{d['model_version']}: ", (d["state"], _state_style(d["state"])),
        f" ({', '.join(flags)})" if flags else "")
    records = len(d["input"]) if isinstance(d["input"], list) else 1
    facts = Text(
        f"records {d['first_record']}–{d['first_record'] + records - 1} · "
        f"quorum {d['quorum']} of {d['replication']} (at most {d['max_replicas']} replicas), "
        f"distinct by {d['distinct_by']} · failures {d['failures']} of {d['max_attempts']} · "
        f"open slots {d['open_slots']}"
        + (f" · finished {_time(d['finished_at'])}" if d["finished_at"] else ""))
    parts: list[RenderableType] = [head, facts, Text(f"input: {_shown(d['input'])}")]
    if d["error"]:
        parts.append(Text(f"error: {d['error']}", style="red"))
    if d["replicas"]:
        parts.append(_replicas(d))
        for r in d["replicas"]:
            if r["stderr_tail"]:
                tail = r["stderr_tail"].rstrip("\n").splitlines()[-STDERR_LINES:]
                parts.append(Text(f"stderr of replica {r['id']} ({r['citizen']}):\n"
                                  + "\n".join(f"  {line}" for line in tail), style="dim"))
    else:
        parts.append(Text("no replica yet"))
    if d["canonical_replica_id"] is not None:
        parts.append(Text(f"canonical result (replica {d['canonical_replica_id']}): "
                          f"{_shown(d['canonical'])}"))
    for w in d["waiting"]:
        parts.append(Text(f"waits: {w['reason']}", style="yellow"))
    return Group(*parts)


def _replicas(d: dict[str, Any]) -> Table:
    table = Table("replica", "citizen", "volunteer", "host", "state", "leased", "started",
                  "returned", "elapsed", "exit", "digest", "error", title="replicas",
                  title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for r in d["replicas"]:
        canonical = r["id"] == d["canonical_replica_id"]
        table.add_row(str(r["id"]) + (" *" if canonical else ""), r["citizen"],
                      r["volunteer"] or "-", r["host"] or "-",
                      Text(r["state"], _state_style(r["state"])), _time(r["leased_at"]),
                      _time(r["started_at"]), _time(r["returned_at"]),
                      "-" if r["elapsed"] is None else f"{r['elapsed']:.2f}s",
                      "-" if r["exit_code"] is None else str(r["exit_code"]),
                      (r["digest"] or "-")[:12], _cut(r["error"] or "-", 60))
    return table


def _state_style(state: str) -> str:
    return {"done": "green", "valid": "green", "failed": "red", "error": "red",
            "invalid": "red", "inconclusive": "magenta", "expired": "yellow",
            "cancelled": "dim"}.get(state, "")


def _shown(value: Any) -> str:
    return _cut(jsonlib.dumps(value, ensure_ascii=False), INPUT_CHARS)


def _cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return f"{text[:width - 1]}… ({len(text)} characters; --json has all)" if width > 100 \
        else text[:width - 1] + "…"


def _time(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
