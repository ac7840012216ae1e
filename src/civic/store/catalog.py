"""The researcher's side of the store: models, datasets, results and status (synchronous)."""

from __future__ import annotations

import csv
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from civic.datasets import (FORMATS, STDIN, Record, cut, display_name, guess_format,
                            read_records)
from civic.errors import DatasetError, DuplicateDataset, NotFound, UsageError
from civic.models import Manifest, load_manifest, pack_bundle
from civic.protocol import MAX_INPUT
from civic.store.db import connect, transaction
from civic.store.queries import q


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
                "bundle_sha256": packed.sha256, "manifest": Jsonb(manifest.to_dict())}).fetchone()
            return ModelAdded(manifest.name, row["version"], packed.sha256, True, manifest)
    finally:
        packed.path.unlink(missing_ok=True)


def list_models(url: str) -> list[dict[str, Any]]:
    with connect(url, row_factory=dict_row) as conn:
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
                   again: bool = False,
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

    records = duties = 0
    content = hashlib.sha256()
    shown = display_name(path)
    with transaction(url) as conn:
        dataset_id = conn.execute(q("insert_dataset"), {
            "model_id": row["id"], "source": shown, "format": fmt,
            "records_per_duty": per_duty, "replication": replication, "quorum": quorum,
            "max_replicas": max_replicas, "max_attempts": manifest.max_attempts}).fetchone()[0]
        with conn.cursor().copy(q("copy_duties")) as copy:
            for duty in cut(read_records(path, fmt, on_bytes=on_bytes, digest=content), per_duty):
                copy.write_row((dataset_id, row["id"], records, _duty_input(shown, duty),
                                replication))
                records += len(duty)
                duties += 1
        sha256 = content.hexdigest()
        conn.execute(q("count_dataset"), {"id": dataset_id, "records": records, "duties": duties,
                                          "sha256": sha256})
        earlier = conn.execute(q("same_content"), {"model": model, "sha256": sha256,
                                                   "id": dataset_id}).fetchone()
        if earlier is not None and not again:
            raise DuplicateDataset(
                f"{shown} holds the same bytes as dataset {earlier[0]} of {model} (imported "
                f"{earlier[1]:%Y-%m-%d %H:%M}); nothing imported — pass --again to compute it "
                "again", earlier[0])
    return DatasetImported(dataset_id, model, row["version"], fmt, records, duties,
                           replication, quorum)


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
                           row["duties"], row["replication"], row["quorum"])


def _duty_input(source: str, duty: list[Record]) -> str:
    """A duty's records as the JSON text stored and sent to citizens, refused when a frame
    could not carry it."""
    try:
        text = json.dumps([r.value for r in duty], allow_nan=False)
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


def unfinished_duties(url: str, dataset_id: int, limit: int = 20) -> list[dict[str, Any]]:
    with connect(url, row_factory=dict_row) as conn:
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
    """Every dataset's duties by state, and every citizen seen with its last contact."""
    with connect(url, row_factory=dict_row) as conn:
        return {"datasets": conn.execute(q("list_datasets"), {"model": None}).fetchall(),
                "citizens": conn.execute(q("list_citizens")).fetchall()}
