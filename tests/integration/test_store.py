"""The researcher's side of the store against a real PostgreSQL: migrations, models, datasets,
exports."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from civic.errors import DatasetError, NotFound, UsageError
from civic.store import catalog, migrate
from civic.store.db import migrations

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------

def test_migrate_applies_each_version_once_and_records_it(empty_database_url, h):
    shipped = [name for _, name, _ in migrations()]
    assert shipped and shipped[0] == "001_initial.sql"

    assert migrate(empty_database_url) == shipped
    assert migrate(empty_database_url) == []  # second run: nothing to do

    rows = h.fetch(empty_database_url, "SELECT version, name FROM civic_migrations ORDER BY version")
    assert rows == [(version, name) for version, name, _ in migrations()]


def test_concurrent_migrators_apply_the_schema_once(empty_database_url, h):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(migrate, [empty_database_url] * 4))
    assert sorted(map(len, results)) == [0, 0, 0, len(migrations())]
    assert h.fetch(empty_database_url, "SELECT count(*) FROM civic_migrations") == [(len(migrations()),)]


def test_migrated_schema_has_tables_and_enums(database_url, h):
    tables = {row[0] for row in h.fetch(
        database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"civic_migrations", "bundles", "models", "datasets", "duties", "citizens",
            "replicas", "volunteers", "servers", "audit", "events"} <= tables

    def labels(enum: str) -> list[str]:
        return [row[0] for row in h.fetch(
            database_url, "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid"
                          " WHERE t.typname = %s ORDER BY e.enumsortorder", (enum,))]

    assert labels("duty_state") == ["pending", "done", "inconclusive", "failed", "cancelled"]
    assert labels("replica_state") == ["leased", "returned", "valid", "invalid", "error", "expired",
                                       "late", "retired"]
    assert migrate(database_url) == []  # the per-test copy is already up to date


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def test_add_model_versions_only_on_change(database_url, model_copy, h):
    first = catalog.add_model(database_url, h.ALPHABET)
    assert (first.name, first.version, first.changed) == ("alphabet", 1, True)
    assert first.manifest.files == ("alphabet.c", "civic.yaml")

    again = catalog.add_model(database_url, h.ALPHABET)
    assert (again.version, again.changed, again.bundle_sha256) == (1, False, first.bundle_sha256)

    copy = model_copy()  # the same files somewhere else: still the same model version
    same = catalog.add_model(database_url, copy)
    assert (same.version, same.changed, same.bundle_sha256) == (1, False, first.bundle_sha256)

    with open(copy / "alphabet.c", "a") as f:
        f.write("\n/* a change */\n")
    second = catalog.add_model(database_url, copy)
    assert (second.version, second.changed) == (2, True)
    assert second.bundle_sha256 != first.bundle_sha256

    rows = h.fetch(database_url, "SELECT sha256, size, length(content) FROM bundles ORDER BY created_at")
    assert {row[0] for row in rows} == {first.bundle_sha256, second.bundle_sha256}
    assert all(size == length for _, size, length in rows)

    shown = catalog.show_model(database_url, "alphabet")
    assert shown["version"] == 2 and [v["version"] for v in shown["versions"]] == [1, 2]


def test_model_versions_with_identical_files_share_one_bundle_row(database_url, model_copy, h):
    original = catalog.add_model(database_url, h.ALPHABET)
    changed = model_copy()
    (changed / "alphabet.c").write_text((changed / "alphabet.c").read_text() + "\n/* v2 */\n")
    assert catalog.add_model(database_url, changed).version == 2

    reverted = catalog.add_model(database_url, h.ALPHABET)  # back to the first files
    assert (reverted.version, reverted.changed) == (3, True)
    assert reverted.bundle_sha256 == original.bundle_sha256

    assert h.fetch(database_url, "SELECT count(*) FROM bundles") == [(2,)]
    assert h.fetch(database_url, "SELECT version FROM models WHERE bundle_sha256 = %s"
                                 " ORDER BY version", (original.bundle_sha256,)) == [(1,), (3,)]


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

def test_import_cuts_one_duty_per_letter_with_the_manifests_replication(alphabet, database_url, h):
    assert (alphabet.records, alphabet.duties, alphabet.replication, alphabet.quorum,
            alphabet.format, alphabet.model_version) == (26, 26, 2, 2, "csv", 1)

    ds = h.fetch(database_url, "SELECT records, duties, records_per_duty, replication, quorum,"
                               " max_replicas, max_attempts FROM datasets WHERE id = %s",
                 (alphabet.id,))
    assert ds == [(26, 26, 1, 2, 2, 4, 3)]

    duties = h.fetch(database_url, "SELECT first_record, input::text, state::text, open_slots,"
                                   " failures FROM duties WHERE dataset_id = %s ORDER BY id",
                     (alphabet.id,))
    assert [(first, json.loads(text)) for first, text, *_ in duties] == \
        [(i, [{"letter": letter}]) for i, letter in enumerate(h.LETTERS)]
    assert {tuple(rest) for _, _, *rest in duties} == {("pending", 2, 0)}

    assert catalog.progress(database_url, alphabet.id) == {
        "total": 26, "pending": 26, "done": 0, "inconclusive": 0, "failed": 0, "cancelled": 0}


def test_import_overrides_records_per_duty_and_replication(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    imported = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                      records_per_duty=5, replication=3, quorum=2)
    assert (imported.records, imported.duties, imported.replication, imported.quorum) == (26, 6, 3, 2)

    duties = h.fetch(database_url, "SELECT first_record, input::text, open_slots FROM duties"
                                   " WHERE dataset_id = %s ORDER BY id", (imported.id,))
    assert [first for first, _, _ in duties] == [0, 5, 10, 15, 20, 25]
    assert [len(json.loads(text)) for _, text, _ in duties] == [5, 5, 5, 5, 5, 1]
    assert json.loads(duties[1][1]) == [{"letter": c} for c in "fghij"]
    assert {slots for *_, slots in duties} == {3}

    wide = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                  replication=5, again=True)
    assert (wide.replication, wide.quorum) == (5, 2)  # the manifest's quorum
    assert h.fetch(database_url, "SELECT max_replicas FROM datasets WHERE id = %s",
                   (wide.id,)) == [(5,)]  # never fewer than the replication


def test_quorum_above_replication_is_refused(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    with pytest.raises(UsageError, match="quorum"):
        catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                               replication=2, quorum=3)
    assert h.fetch(database_url, "SELECT count(*) FROM datasets") == [(0,)]


def test_a_bad_row_stores_nothing(database_url, tmp_path, h):
    catalog.add_model(database_url, h.ALPHABET)
    lines = (h.ALPHABET / "letters.csv").read_text().splitlines()
    assert lines[6] == "f"  # line 7 of the file
    lines[6] = "f,extra"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")

    with pytest.raises(DatasetError) as info:
        catalog.import_dataset(database_url, "alphabet", bad)
    assert info.value.line == 7
    assert "line 7" in str(info.value)

    assert h.fetch(database_url, "SELECT count(*) FROM datasets") == [(0,)]
    assert h.fetch(database_url, "SELECT count(*) FROM duties") == [(0,)]
    # The failed import left the database usable: the good file still imports.
    assert catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv").duties == 26


def test_import_for_an_unknown_model_is_not_found(database_url, h):
    with pytest.raises(NotFound, match="nope"):
        catalog.import_dataset(database_url, "nope", h.ALPHABET / "letters.csv")


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def _export(url: str, dataset_id: int, fmt: str) -> tuple[int, str]:
    buf = io.StringIO()
    count = catalog.export_results(url, dataset_id, fmt, buf)
    return count, buf.getvalue()


def test_export_jsonl_gives_one_row_per_record(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                records_per_duty=5)
    assert _export(database_url, ds.id, "jsonl") == (0, "")  # nothing settled yet

    asyncio.run(h.settle_all(database_url))
    assert catalog.progress(database_url, ds.id)["done"] == 6

    duty_of = dict(h.fetch(database_url, "SELECT first_record, id FROM duties WHERE dataset_id = %s",
                           (ds.id,)))
    count, text = _export(database_url, ds.id, "jsonl")
    rows = [json.loads(line) for line in text.splitlines()]
    assert count == len(rows) == 26
    assert rows == [{"duty": duty_of[i - i % 5], "record": i, "original_letter": letter,
                     "letter": h.next_letter(letter)} for i, letter in enumerate(h.LETTERS)]


def test_export_csv_has_a_header_with_every_column(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv")

    def output(assignment):  # only the last letter's rows carry an extra column
        rows = h.alphabet_output(assignment.input)
        return [row | {"wrapped": True} if row["original_letter"] == "z" else row for row in rows]

    asyncio.run(h.settle_all(database_url, output))
    count, text = _export(database_url, ds.id, "csv")
    assert count == 26
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["duty", "record", "original_letter", "letter", "wrapped"]
    assert len(table) == 27
    assert table[1][1:] == ["0", "a", "b", ""]
    assert table[26][1:] == ["25", "z", "a", "true"]


def test_export_of_non_list_outputs_gives_one_row_per_duty(database_url, h):
    catalog.add_model(database_url, h.ALPHABET)
    ds = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                records_per_duty=2)
    asyncio.run(h.settle_all(database_url, lambda a: "".join(r["letter"] for r in a.input)))

    count, text = _export(database_url, ds.id, "jsonl")
    rows = [json.loads(line) for line in text.splitlines()]
    assert count == len(rows) == 13
    assert [row["record"] for row in rows] == list(range(0, 26, 2))
    assert [row["result"] for row in rows] == [h.LETTERS[i:i + 2] for i in range(0, 26, 2)]
    assert all(set(row) == {"duty", "record", "result"} for row in rows)

    count, text = _export(database_url, ds.id, "csv")
    table = list(csv.reader(io.StringIO(text)))
    assert count == 13 and table[0] == ["duty", "record", "result"]
    assert table[1][1:] == ["0", "ab"]


def test_export_refuses_an_unknown_format(alphabet, database_url):
    with pytest.raises(UsageError, match="format"):
        catalog.export_results(database_url, alphabet.id, "xml", io.StringIO())


def test_resolve_dataset_picks_the_latest_or_the_one_asked_for(alphabet, database_url, h):
    later = catalog.import_dataset(database_url, "alphabet", h.ALPHABET / "letters.csv",
                                   again=True)
    assert catalog.resolve_dataset(database_url, "alphabet") == later.id
    assert catalog.resolve_dataset(database_url, "alphabet", alphabet.id) == alphabet.id
    with pytest.raises(NotFound):
        catalog.resolve_dataset(database_url, "alphabet", later.id + 100)


def test_a_files_extension_beats_the_manifests_format(database_url, tmp_path, h):
    """The alphabet's manifest says csv; a .jsonl file is still read as JSON Lines, and a
    broken one is refused with its line — never half-read as CSV."""
    catalog.add_model(database_url, h.ALPHABET)
    good = tmp_path / "letters.jsonl"
    good.write_text('{"letter": "a"}\n{"letter": "b"}\n')
    imported = catalog.import_dataset(database_url, "alphabet", good)
    assert (imported.format, imported.records) == ("jsonl", 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"letter": "a"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2"):
        catalog.import_dataset(database_url, "alphabet", bad)
    odd = tmp_path / "letters.data"  # no telling extension: the manifest's csv applies
    odd.write_text("letter\nq\n")
    assert catalog.import_dataset(database_url, "alphabet", odd).format == "csv"
