"""Duty and replica states: ``str`` Enums mirroring the PostgreSQL enums of the same names.

Members compare, hash and serialise as their values, so a row's ``state`` text and the count
columns named after the states (``progress``'s ``pending``, ``done``…) are read with them.
Declared in the database's order; a test checks both sides hold the same values.
"""

from __future__ import annotations

from enum import StrEnum


class DutyState(StrEnum):
    """``duty_state``: where a duty is on its way to a canonical result."""

    PENDING = "pending"  # waiting for replicas or for their results
    DONE = "done"  # its quorum agreed: it has a canonical result
    INCONCLUSIVE = "inconclusive"  # max_replicas results and no quorum
    FAILED = "failed"  # max_attempts failed replicas, or failed by the operator
    CANCELLED = "cancelled"  # given up by the operator: finished without a result


class ReplicaState(StrEnum):
    """``replica_state``: one attempt at a duty by one citizen."""

    LEASED = "leased"  # out to a citizen, under a deadline
    RETURNED = "returned"  # a result came back, not judged yet
    VALID = "valid"  # its result agrees with the canonical one
    INVALID = "invalid"  # its result disagrees with the canonical one
    ERROR = "error"  # the model failed, or the citizen said it could not compute it
    EXPIRED = "expired"  # its deadline passed without a result
    LATE = "late"  # a result that came after its duty settled: kept, counted for nobody
    RETIRED = "retired"  # a result from before its duty was retried: kept, counted for nobody


FINISHED = frozenset({DutyState.DONE, DutyState.INCONCLUSIVE, DutyState.FAILED,
                      DutyState.CANCELLED})
# The order listings show a dataset's duty counts in: finished work first.
SHOWN = (DutyState.DONE, DutyState.PENDING, DutyState.FAILED, DutyState.INCONCLUSIVE,
         DutyState.CANCELLED)
