"""The ``str`` Enums mirror the PostgreSQL enums: same values, same order."""

from __future__ import annotations

import pytest

from civic.store.states import DutyState, ReplicaState

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("enum, name", [(DutyState, "duty_state"),
                                        (ReplicaState, "replica_state")])
def test_enums_match_the_database(database_url: str, h, enum: type, name: str) -> None:
    # Text, not the array: an unregistered enum array reaches Python as one string.
    (values,) = h.fetch(database_url, f"SELECT enum_range(NULL::{name})::text[]")[0]
    assert values == [state.value for state in enum]

