"""Result verification: when do a duty's replicas agree, and what happens when they do not."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any


def digest(output: Any) -> str:
    """sha256 of the canonical JSON encoding: key order and whitespace never matter."""
    text = json.dumps(output, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def agree(a: Any, b: Any, tolerance: float | None) -> bool:
    """Whether two outputs agree: exactly, or with numbers within ``tolerance`` of each other."""
    if tolerance is None:
        return digest(a) == digest(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b  # True == 1 in Python, not in JSON
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(agree(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k], tolerance) for k in a)
    return a == b


@dataclass(frozen=True)
class Verdict:
    """What to do with a duty after a result: settle it, lease more replicas, give up, or wait."""

    action: str  # "settle" | "more" | "inconclusive" | "wait"
    digest: str | None = None
    replica_id: int | None = None
    slots: int = 0


def decide(tally: list[tuple[str, int, int]], *, quorum: int, leased: int, open_slots: int,
           spent: int, max_replicas: int) -> Verdict:
    """Decide a duty's fate from its results grouped by digest (largest group first).

    Args:
        tally: (digest, votes, first replica id) per group of agreeing results.
        quorum: agreeing results needed for a canonical result.
        leased: replicas still being computed.
        open_slots: replicas that may be leased but are not yet.
        spent: replicas that count against max_replicas (leased, returned, judged).
        max_replicas: the most replicas a duty may ever get.
    """
    best = tally[0][1] if tally else 0
    if best >= quorum:
        return Verdict("settle", digest=tally[0][0], replica_id=tally[0][2])
    need = quorum - best - leased - open_slots  # even if every outstanding replica agrees
    if need <= 0:
        return Verdict("wait")
    if spent + open_slots + need <= max_replicas:
        return Verdict("more", slots=need)
    return Verdict("inconclusive")
