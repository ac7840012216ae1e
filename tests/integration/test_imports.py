"""Imports that would compute something twice, or that no frame could carry, are refused."""

from __future__ import annotations

import json

import pytest

from civic.errors import DatasetError, DuplicateDataset
from civic.protocol import MAX_INPUT
from civic.store import catalog


def test_the_same_file_twice_is_refused_unless_asked_for(alphabet, database_url, tmp_path, h):
    copy = tmp_path / "same-letters.csv"  # another name, the same bytes
    copy.write_bytes((h.ALPHABET / "letters.csv").read_bytes())
    with pytest.raises(DuplicateDataset, match=f"same bytes as dataset {alphabet.id} of "
                                               "alphabet") as refused:
        catalog.import_dataset(database_url, "alphabet", copy)
    assert refused.value.dataset_id == alphabet.id and "--again" in str(refused.value)
    assert h.fetch(database_url, "SELECT count(*) FROM datasets") == [(1,)]
    assert h.fetch(database_url, "SELECT count(*) FROM duties") == [(26,)]

    again = catalog.import_dataset(database_url, "alphabet", copy, again=True)
    assert again.id != alphabet.id and again.duties == 26

    copy.write_bytes(copy.read_bytes() + b"a\n")  # one byte more: another dataset
    assert catalog.import_dataset(database_url, "alphabet", copy).records == 27


def test_a_record_too_large_for_a_frame_is_refused_with_its_line(database_url, tmp_path, h):
    catalog.add_model(database_url, h.ALPHABET)
    data = tmp_path / "big.jsonl"
    big = "x" * (17 * 2**20)  # 17 MiB: imported fine before, then pending forever
    data.write_text("\n".join(json.dumps({"letter": v}) for v in ("a", "b", big, "c")) + "\n")
    with pytest.raises(DatasetError, match=r"big.jsonl, line 3: this record alone is 17.0 MiB"):
        catalog.import_dataset(database_url, "alphabet", data)
    assert h.fetch(database_url, "SELECT count(*) FROM datasets") == [(0,)]


def test_a_duty_too_large_for_a_frame_names_its_first_line(database_url, tmp_path, h):
    catalog.add_model(database_url, h.ALPHABET)
    data = tmp_path / "wide.jsonl"
    third = "y" * (MAX_INPUT // 3)  # each record fits, three of them do not
    data.write_text("\n".join(json.dumps({"letter": third}) for _ in range(6)) + "\n")
    with pytest.raises(DatasetError, match=r"wide.jsonl, line 1: the duty of 3 records starting here \(use "
                                           "fewer --records-per-duty\\)"):
        catalog.import_dataset(database_url, "alphabet", data, records_per_duty=3)
    assert catalog.import_dataset(database_url, "alphabet", data, records_per_duty=2).duties == 3
