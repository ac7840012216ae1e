"""Tests for civic.server.quorum: canonical digests, agreement and the verdict on a duty."""

from __future__ import annotations

import json

import pytest

from civic.server.quorum import Verdict, agree, decide, digest

# --- digest -----------------------------------------------------------------------------------


def test_digest_ignores_key_order_and_whitespace() -> None:
    a = json.loads('{"b": [1, 2, {"y": 1, "x": "é"}], "a": null}')
    b = json.loads('{ "a" :null,"b":[ 1,2,{ "x":"é","y":1 } ] }')
    assert digest(a) == digest(b)


def test_digest_is_a_sha256_hex() -> None:
    assert len(digest({"a": 1})) == 64
    assert int(digest({"a": 1}), 16) >= 0


@pytest.mark.parametrize("a, b", [
    ([1, 2], [2, 1]),
    ({"a": 1}, {"a": 2}),
    ({"a": 1}, {"b": 1}),
    (True, 1),
    (None, 0),
    ("1", 1),
])
def test_digest_differs_for_different_outputs(a: object, b: object) -> None:
    assert digest(a) != digest(b)


# --- agree ------------------------------------------------------------------------------------


def test_agree_exact_ignores_key_order() -> None:
    assert agree({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, None)


def test_agree_exact_refuses_tiny_difference() -> None:
    assert not agree({"x": 1.0}, {"x": 1.0000001}, None)


@pytest.mark.parametrize("a, b", [
    (1.0, 1.0 + 1e-9),
    (1, 1.0),
    (0.0, 1e-9),  # absolute tolerance near zero
    ([1.0, {"x": [2.0, 3.0]}], [1.0 + 1e-9, {"x": [2.0, 3.0 - 1e-9]}]),
    ({"a": {"b": [1e6]}}, {"a": {"b": [1e6 * (1 + 1e-9)]}}),
    ("same", "same"),
    (None, None),
    (True, True),
])
def test_agree_within_tolerance(a: object, b: object) -> None:
    assert agree(a, b, 1e-6)


@pytest.mark.parametrize("a, b", [
    (1.0, 1.1),
    ([1.0, {"x": [2.0, 3.0]}], [1.0, {"x": [2.0, 3.1]}]),
    ([1, 2], [1, 2, 3]),
    ([1, 2, 3], [1, 2]),
    ({"a": 1}, {"a": 1, "b": 2}),
    ({"a": 1}, {"b": 1}),
    (True, 1),
    (1, True),
    (False, 0),
    (0.0, False),
    (True, False),
    ("1", 1),
    (None, 0),
    ([1], {"0": 1}),
])
def test_disagree_despite_tolerance(a: object, b: object) -> None:
    assert not agree(a, b, 1e-6)


# --- decide -----------------------------------------------------------------------------------


def verdict(tally: list[tuple[str, int, int]], *, quorum: int = 2, leased: int = 0,
            open_slots: int = 0, spent: int = 2, max_replicas: int = 5) -> Verdict:
    return decide(tally, quorum=quorum, leased=leased, open_slots=open_slots, spent=spent,
                  max_replicas=max_replicas)


def test_settles_when_top_group_reaches_quorum() -> None:
    got = verdict([("aaa", 2, 11), ("bbb", 1, 12)], spent=3)
    assert got == Verdict("settle", digest="aaa", replica_id=11)


def test_settles_even_with_replicas_outstanding() -> None:
    assert verdict([("aaa", 3, 4)], quorum=3, leased=2, spent=5).action == "settle"


def test_single_replica_quorum_one_settles_on_first_result() -> None:
    got = decide([("aaa", 1, 42)], quorum=1, leased=0, open_slots=0, spent=1, max_replicas=1)
    assert got == Verdict("settle", digest="aaa", replica_id=42)


def test_waits_when_leased_replicas_could_make_quorum() -> None:
    assert verdict([("aaa", 1, 1)], leased=1) == Verdict("wait")


def test_waits_when_open_slots_could_make_quorum() -> None:
    assert verdict([("aaa", 1, 1)], open_slots=1, spent=1) == Verdict("wait")


def test_waits_with_no_results_yet() -> None:
    assert verdict([], leased=2) == Verdict("wait")


def test_asks_for_one_more_after_a_split() -> None:
    assert verdict([("aaa", 1, 1), ("bbb", 1, 2)]) == Verdict("more", slots=1)


def test_asks_for_exactly_the_missing_replicas() -> None:
    # quorum 4, best group 1, one replica still leased: two more are needed.
    got = verdict([("aaa", 1, 1), ("bbb", 1, 2)], quorum=4, leased=1, spent=3, max_replicas=10)
    assert got == Verdict("more", slots=2)


def test_more_when_missing_replicas_exactly_fit() -> None:
    assert verdict([("aaa", 1, 1), ("bbb", 1, 2)], spent=4, max_replicas=5).slots == 1


def test_open_slots_count_against_max_replicas() -> None:
    got = verdict([("aaa", 1, 1)], quorum=3, open_slots=1, spent=4, max_replicas=5)
    assert got == Verdict("inconclusive")


def test_inconclusive_when_missing_replicas_do_not_fit() -> None:
    assert verdict([("aaa", 1, 1), ("bbb", 1, 2)], spent=5, max_replicas=5) == Verdict("inconclusive")


def test_inconclusive_when_more_than_one_is_missing_and_only_one_fits() -> None:
    got = verdict([("aaa", 1, 1), ("bbb", 1, 2), ("ccc", 1, 3)], quorum=3, spent=4, max_replicas=5)
    assert got == Verdict("inconclusive")
