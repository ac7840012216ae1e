"""Duty and replica states read rows and serialise as their text (the database side is
checked in tests/integration/test_state_enums.py)."""

from __future__ import annotations

import json

from civic.store.states import FINISHED, SHOWN, DutyState, ReplicaState


def test_states_read_rows_as_their_text() -> None:
    row = {"pending": 3, "done": 4, "inconclusive": 1, "failed": 2, "cancelled": 5}
    assert [row[state] for state in SHOWN] == [4, 3, 2, 1, 5]
    assert sum(row[state] for state in FINISHED) == 12
    assert json.dumps({DutyState.DONE: ReplicaState.LATE}) == '{"done": "late"}'
    assert f"{DutyState.FAILED}" == "failed" and DutyState("pending") is DutyState.PENDING
