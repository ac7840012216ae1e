"""The researcher's side of the store: models, datasets, results and status (synchronous)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from psycopg.copy import QueuedLibpqWriter
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from civic.datasets import (FORMATS, STDIN, Record, cut, display_name, guess_format,
                            read_records)
from civic.errors import DatasetError, DuplicateDataset, NotFound, UsageError
from civic.models import DISTINCT, Manifest, load_manifest, pack_bundle
from civic.protocol import MAX_INPUT, size_text
from civic.store.db import connect, transaction
from civic.store.queries import q
from civic.store.states import DutyState

_VOLUNTEER = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")

@dataclass(frozen=True)
class ModelAdded:
    """What ``add_model`` did: the version now current, and whether it is new."""

    name: str
    version: int
    bundle_sha256: str
    changed: bool
    manifest: Manifest


@dataclass(frozen=True)
class DatasetImported:
    id: int
    model: str
    model_version: int
    format: str
    records: int
    duties: int
    replication: int
    quorum: int
    distinct: str = "host"


@dataclass(frozen=True)
class ModelSummary:
    """A model's latest version, as ``list_models`` lists it."""

    name: str
    version: int
    bundle_sha256: str
    manifest: dict[str, Any]
    created_at: datetime
    datasets: int  # datasets imported for any of its versions
    state: str = "idle"  # paused | running (duties pending) | idle


@dataclass(frozen=True)
class UnfinishedDuty:
    """A duty without a canonical result, with the last error of its replicas."""

    id: int
    state: DutyState
    failures: int
    error: str | None
    stderr_tail: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", DutyState(self.state))


@dataclass(frozen=True)
class Volunteer:
    """A volunteer with its citizens (those connected now) and their results."""

    name: str
    created_at: datetime
    removed: bool
    removed_at: datetime | None
    citizens: int
    connected: int
    valid: int
    invalid: int
    errors: int


def _latest_model(conn: Any, name: str) -> dict[str, Any]:
    row = conn.execute(q("latest_model"), {"name": name}).fetchone()
    if row is None:
        raise NotFound(f"no model named {name!r}; add it with: civic model add DIR")
    return row


def add_model(url: str, model_dir: Path) -> ModelAdded:
    """Validate DIR/civic.yaml, pack the bundle and store a new version if anything changed."""
    manifest = load_manifest(model_dir)
    packed = pack_bundle(model_dir, manifest)
    try:
        with transaction(url) as conn:
            conn.row_factory = dict_row
            # One writer per model name at a time, so two adds cannot take the same version.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (manifest.name,))
            latest = conn.execute(q("latest_model"), {"name": manifest.name}).fetchone()
            if latest and latest["bundle_sha256"] == packed.sha256 \
                    and latest["manifest"] == manifest.to_dict():
                return ModelAdded(manifest.name, latest["version"], packed.sha256, False, manifest)
            conn.execute(q("insert_bundle"), {"sha256": packed.sha256, "size": packed.size,
                                              "content": packed.path.read_bytes()})
            row = conn.execute(q("insert_model"), {
                "name": manifest.name, "version": (latest["version"] + 1) if latest else 1,
                "bundle_sha256": packed.sha256, "manifest": Jsonb(manifest.to_dict()),
                "needs_memory": manifest.memory_bytes, "needs_build": manifest.build is not None,
                "platforms": None if manifest.platforms is None else list(manifest.platforms),
            }).fetchone()
            conn.execute(q("inherit_pause"), {"id": row["id"]})  # a paused model stays paused
            return ModelAdded(manifest.name, row["version"], packed.sha256, True, manifest)
    finally:
        packed.path.unlink(missing_ok=True)


def list_models(url: str) -> list[ModelSummary]:
    with connect(url, row_factory=class_row(ModelSummary)) as conn:
        return conn.execute(q("list_models")).fetchall()


def show_model(url: str, name: str) -> dict[str, Any]:
    """The latest version of a model with its manifest, every version and its datasets."""
    with connect(url, row_factory=dict_row) as conn:
        model = _latest_model(conn, name)
        model["versions"] = conn.execute(q("model_versions"), {"name": name}).fetchall()
        model["datasets"] = conn.execute(q("list_datasets"), {"model": name}).fetchall()
        return model


def import_dataset(url: str, model: str, path: Path, *, fmt: str | None = None,
                   records_per_duty: int | None = None, replication: int | None = None,
                   quorum: int | None = None, max_replicas: int | None = None,
                   again: bool = False, distinct: str | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> DatasetImported:
    """Stream a dataset file (``-``: standard input) into duties with COPY, all in one
    transaction: all or nothing.

    Raises:
        DuplicateDataset: the file's bytes are those of a dataset already imported for this
            model, and ``again`` is False (nothing is stored).
        DatasetError: a record cannot be read, or a duty is too large to send to a citizen.
    """
    with connect(url, row_factory=dict_row) as conn:
        row = _latest_model(conn, model)
    manifest = Manifest.from_dict(row["manifest"])
    fmt = fmt or _format_of(path, manifest.input_format)
    per_duty = records_per_duty or manifest.records_per_duty
    replication = replication or manifest.replication
    quorum = quorum or min(manifest.quorum, replication)
    if per_duty < 1 or replication < 1 or quorum < 1:
        raise UsageError("--records-per-duty, --replication and --quorum must be at least 1")
    if quorum > replication:
        raise UsageError(f"--quorum {quorum} cannot exceed --replication {replication}")
    if max_replicas is not None and max_replicas < replication:
        raise UsageError(f"--max-replicas {max_replicas} cannot be below --replication "
                         f"{replication}")
    max_replicas = max_replicas or max(manifest.max_replicas, replication)
    distinct = distinct or manifest.distinct
    if distinct not in DISTINCT:
        raise UsageError(f"--distinct must be one of {', '.join(DISTINCT)}, not {distinct!r}")

    records = duties = 0
    content = hashlib.sha256()
    shown = display_name(path)
    with transaction(url) as conn:
        dataset_id = conn.execute(q("insert_dataset"), {
            "model_id": row["id"], "source": shown, "format": fmt,
            "records_per_duty": per_duty, "replication": replication, "quorum": quorum,
            "max_replicas": max_replicas, "max_attempts": manifest.max_attempts,
            "distinct_by": distinct}).fetchone()[0]
        cursor = conn.cursor()
        # The writer thread sends rows while this one reads and encodes the next ones.
        with cursor.copy(q("copy_duties"), writer=QueuedLibpqWriter(cursor)) as copy:
            for duty in cut(read_records(path, fmt, on_bytes=on_bytes, digest=content), per_duty):
                copy.write_row((dataset_id, row["id"], records, _duty_input(shown, duty),
                                replication))
                records += len(duty)
                duties += 1
        sha256 = content.hexdigest()
        conn.execute(q("count_dataset"), {"id": dataset_id, "records": records, "duties": duties,
                                          "sha256": sha256})
        conn.execute(q("announce_work"))  # at commit: parked citizens lease at once
        earlier = conn.execute(q("same_content"), {"model": model, "sha256": sha256,
                                                   "id": dataset_id}).fetchone()
        if earlier is not None and not again:
            raise DuplicateDataset(
                f"{shown} holds the same bytes as dataset {earlier[0]} of {model} (imported "
                f"{earlier[1]:%Y-%m-%d %H:%M}); nothing imported — pass --again to compute it "
                "again", earlier[0])
    return DatasetImported(dataset_id, model, row["version"], fmt, records, duties,
                           replication, quorum, distinct)


def resumable_dataset(url: str, model: ModelAdded, path: Path) -> DatasetImported | None:
    """A dataset of this model version cut as its manifest says from a file with these bytes:
    what an interrupted or earlier ``civic run`` of the same job left."""
    with open(path, "rb") as f:
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    with connect(url, row_factory=dict_row) as conn:
        row = conn.execute(q("resumable_dataset"), {
            "model": model.name, "version": model.version, "sha256": sha256,
            "records_per_duty": model.manifest.records_per_duty}).fetchone()
    if row is None:
        return None
    return DatasetImported(row["id"], model.name, model.version, row["format"], row["records"],
                           row["duties"], row["replication"], row["quorum"], row["distinct_by"])


_ENCODE = json.JSONEncoder(allow_nan=False).encode  # one encoder for every duty


def _duty_input(source: str, duty: list[Record]) -> str:
    """A duty's records as the JSON text stored and sent to citizens, refused when a frame
    could not carry it."""
    try:
        text = _ENCODE([r.value for r in duty])
    except ValueError as exc:
        raise DatasetError(source, f"record cannot be stored: {exc}", duty[0].line) from None
    # len() counts characters, and a character is at most 4 bytes: encode only when it matters.
    if len(text) > MAX_INPUT // 4 and (size := len(text.encode())) > MAX_INPUT:
        what = ("this record alone" if len(duty) == 1 else
                f"the duty of {len(duty)} records starting here (use fewer --records-per-duty)")
        raise DatasetError(source, f"{what} is {size / 2**20:.1f} MiB of JSON ({size} bytes), "
                                   f"above the {MAX_INPUT} bytes ({MAX_INPUT // 2**20} MiB) a "
                                   "duty may carry to a citizen", duty[0].line)
    return text


def _format_of(path: Path, manifest_format: str | None) -> str:
    """A file's own extension says most; the manifest's format covers extensions that don't."""
    try:
        return guess_format(path)
    except UsageError:
        if manifest_format:
            return manifest_format
        if path == STDIN:
            raise UsageError("reading a dataset from standard input: pass --format "
                             f"({', '.join(FORMATS)})") from None
        raise


def list_datasets(url: str, model: str | None = None) -> list[dict[str, Any]]:
    with connect(url, row_factory=dict_row) as conn:
        if model is not None:
            _latest_model(conn, model)
        return conn.execute(q("list_datasets"), {"model": model}).fetchall()


def resolve_dataset(url: str, model: str, dataset_id: int | None = None) -> int:
    """The dataset to export: the one asked for, else the model's latest."""
    with connect(url) as conn:
        _latest_model(conn, model)
        if dataset_id is None:
            row = conn.execute(q("latest_dataset"), {"model": model}).fetchone()
            if row is None:
                raise NotFound(f"model {model!r} has no dataset; import one with: "
                               f"civic dataset import {model} FILE")
        else:
            row = conn.execute(q("dataset_of_model"), {"model": model, "id": dataset_id}).fetchone()
            if row is None:
                raise NotFound(f"model {model!r} has no dataset {dataset_id}")
        return row[0]


def progress(url: str, dataset_id: int) -> dict[str, int]:
    """Duties of a dataset by state, with the total."""
    with connect(url, row_factory=dict_row) as conn:
        return conn.execute(q("progress"), {"dataset_id": dataset_id}).fetchone()


def unfinished_duties(url: str, dataset_id: int, limit: int = 20) -> list[UnfinishedDuty]:
    with connect(url, row_factory=class_row(UnfinishedDuty)) as conn:
        return conn.execute(q("unfinished_duties"),
                            {"dataset_id": dataset_id, "limit": limit}).fetchall()


def result_rows(url: str, dataset_id: int) -> Iterator[dict[str, Any]]:
    """Canonical results, streamed: one row per record when the output is a JSON list
    (carrying its duty id and the record's index in the dataset), else one row per duty."""
    with connect(url) as conn, conn.transaction():
        with conn.cursor(name="civic_export") as cursor:  # server-side: never all rows at once
            cursor.itersize = 1000
            cursor.execute(q("canonical_results"), {"dataset_id": dataset_id})
            for duty_id, first, canonical in cursor:
                items = canonical if isinstance(canonical, list) else [canonical]
                for offset, item in enumerate(items):
                    row: dict[str, Any] = {"duty": duty_id, "record": first + offset}
                    if isinstance(item, dict) and not row.keys() & item.keys():
                        row.update(item)
                    else:
                        row["result"] = item
                    yield row


def export_results(url: str, dataset_id: int, fmt: str, out: TextIO) -> int:
    """Write canonical results as CSV or JSON Lines; returns the number of rows."""
    if fmt == "jsonl":
        count = 0
        for count, row in enumerate(result_rows(url, dataset_id), 1):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return count
    if fmt != "csv":
        raise UsageError(f"unknown export format {fmt!r}: choose csv or jsonl")
    # CSV needs every column up front: a first streaming pass collects them.
    columns: dict[str, None] = {}
    for row in result_rows(url, dataset_id):
        columns.update(dict.fromkeys(row))
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    count = 0
    for count, row in enumerate(result_rows(url, dataset_id), 1):
        writer.writerow({key: _cell(value) for key, value in row.items()})
    return count


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return "" if value is None else value
    return json.dumps(value, ensure_ascii=False)


def join_token(url: str, rotate: bool = False) -> str:
    """The join token new citizens need; created if missing, replaced with ``rotate``."""
    with transaction(url) as conn:
        conn.execute(q("rotate_join_token" if rotate else "ensure_join_token"),
                     {"token": secrets.token_urlsafe(24)})
        return conn.execute(q("join_token")).fetchone()[0]


def status(url: str) -> dict[str, Any]:
    """Every dataset's duties by state with what its waiting duties wait for, and every
    citizen seen with its last contact."""
    with connect(url, row_factory=dict_row) as conn:
        datasets = conn.execute(q("list_datasets"), {"model": None}).fetchall()
        for dataset in datasets:
            dataset["waiting"] = ([asdict(w) for w in waiting_on(conn, dataset["id"])]
                                  if dataset[DutyState.PENDING] else [])
        return {"datasets": datasets, "citizens": conn.execute(q("list_citizens")).fetchall()}


# ---------------------------------------------------------------------------------------------
# Volunteers
# ---------------------------------------------------------------------------------------------

LAB = "lab"  # the built-in volunteer of citizens that joined with the server-wide join token


def add_volunteer(url: str, name: str) -> str:
    """Create a volunteer and return its join token, which is stored only hashed (shown once)."""
    if not _VOLUNTEER.fullmatch(name):
        raise UsageError(f"volunteer name {name!r} must be 1-63 of a-z 0-9 _ . - starting with "
                         "a-z or 0-9")
    token = secrets.token_urlsafe(24)
    with transaction(url) as conn:
        if conn.execute(q("insert_volunteer"), {
                "name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest()
        }).fetchone() is None:
            raise UsageError(f"volunteer {name!r} exists already")
    return token


def list_volunteers(url: str) -> list[Volunteer]:
    """Every volunteer with its citizens, those connected now, their results and if removed."""
    with connect(url, row_factory=class_row(Volunteer)) as conn:
        return conn.execute(q("list_volunteers")).fetchall()


def remove_volunteer(url: str, name: str) -> None:
    """Refuse a volunteer's citizens from now on (connected ones are dropped within seconds)."""
    if name == LAB:
        raise UsageError("the lab volunteer is the server-wide join token: rotate it with "
                         "`civic server token --rotate` instead")
    with transaction(url) as conn:
        if conn.execute(q("remove_volunteer"), {"name": name}).fetchone() is None:
            raise NotFound(f"no volunteer named {name!r}; see civic volunteer list")


# ---------------------------------------------------------------------------------------------
# Duties that cannot progress
# ---------------------------------------------------------------------------------------------

SEEN_WITHIN = 300.0  # seconds: a citizen marked connected but silent longer is not counted
SAMPLE = 100  # duties checked one by one for distinct sources


@dataclass(frozen=True)
class Waiting:
    """Pending duties of a dataset that no connected, awake citizen may lease now, and why.

    ``kind`` is one of no-citizen, resting, memory, build, platform, fit (no single citizen fits
    every need), distinct (every connected citizen, or its host or volunteer, already gave a
    result that counts). ``duty_ids`` lists them for distinct (from a bounded sample; ``duties``
    counts that sample's); for the others every duty of the dataset with an open slot waits
    (``duty_ids`` is empty, ``duties`` counts them).
    """

    kind: str
    reason: str
    duties: int
    duty_ids: tuple[int, ...] = ()


def waiting(url: str, dataset_id: int, sample: int = SAMPLE) -> list[Waiting]:
    """Why a dataset's pending duties cannot be leased by any citizen connected now; empty when
    they can (or none wait). Cheap at any size: aggregates over connected citizens, and a
    sample of at most ``sample`` duties for the per-duty check."""
    with connect(url, row_factory=dict_row) as conn:
        return waiting_on(conn, dataset_id, sample)


def waiting_on(conn: Any, dataset_id: int, sample: int = SAMPLE) -> list[Waiting]:
    """``waiting`` on a connection the caller holds (status reads a whole page in one
    snapshot)."""
    needs = conn.execute(q("dataset_needs"), {"dataset_id": dataset_id}).fetchone()
    if needs is None:
        raise NotFound(f"no dataset {dataset_id}")
    if not needs["open"]:
        return []
    params = {"needs_memory": needs["needs_memory"], "needs_build": needs["needs_build"],
              "platforms": needs["platforms"], "seen_within": SEEN_WITHIN}
    fit = conn.execute(q("connected_fit"), params).fetchone()
    open_, memory = needs["open"], needs["needs_memory"]
    if not fit["connected"]:
        return [Waiting("no-citizen", "no citizen is connected", open_)]
    if not fit["fit_memory"]:
        return [Waiting("memory", f"needs {_size(memory)} of memory and connected citizens "
                                  f"have at most {_size(fit['most_memory'] or 0)}", open_)]
    if not fit["fit_build"]:
        return [Waiting("build", "needs a C compiler (the model has a build step) and no "
                                 "connected citizen has one", open_)]
    if not fit["fit_platform"]:
        return [Waiting("platform", f"runs on {', '.join(needs['platforms'])} only and no "
                                    "connected citizen is on one of those", open_)]
    if not fit["fit"]:
        return [Waiting("fit", "no connected citizen has enough memory, a C compiler and a "
                               "listed platform at once", open_)]
    if not fit["awake"]:
        return [Waiting("resting", "every connected citizen that fits is resting (it kept "
                                   "failing or disagreeing)", open_)]
    blocked = conn.execute(q("distinct_blocked"), params | {
        "dataset_id": dataset_id, "distinct_by": needs["distinct_by"], "sample": sample,
    }).fetchall()
    by_need: dict[int, list[int]] = {}
    for row in blocked:
        by_need.setdefault(row["open_slots"], []).append(row["id"])
    sources = {"citizen": "citizens", "host": "hosts", "volunteer": "volunteers"}[
        needs["distinct_by"]]
    shares = ("" if needs["distinct_by"] == "citizen" else
              f" or shares its {needs['distinct_by']} with one that did")
    return [Waiting("distinct", f"needs {n} more result(s) from distinct {sources} and every "
                                f"connected citizen already gave one{shares}", len(ids),
                    tuple(ids))
            for n, ids in sorted(by_need.items())]


def fail_duties(url: str, dataset_id: int, reason: str,
                duty_ids: Sequence[int] | None = None) -> int:
    """Fail a dataset's pending duties (those in ``duty_ids``, or all of them) with ``reason``
    as their error; returns how many. Replicas still out come back as late results."""
    with transaction(url) as conn:
        return conn.execute(q("fail_duties"), {
            "dataset_id": dataset_id, "reason": reason,
            "ids": None if duty_ids is None else list(duty_ids)}).rowcount


def unleased(url: str, duty_ids: Sequence[int]) -> list[int]:
    """Those of ``duty_ids`` that no citizen holds a lease of now (nothing in flight can
    change what they wait for)."""
    with connect(url) as conn:
        rows = conn.execute(q("unleased_duties"), {"ids": list(duty_ids)}).fetchall()
    return [duty_id for (duty_id,) in rows]


def _size(size: int | None) -> str:
    return size_text(size) if size else "unknown"
