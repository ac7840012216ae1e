"""What one server counts of its own work, for /metrics: a few running figures per batch.

Plain numbers, not a metrics library: the server imports nothing of the web, and a batch pays
two clock reads and a few additions, never anything per duty. The dashboard turns these into
Prometheus families when it is scraped (civic.web.metrics).
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

# Seconds: a batch's statements take about a millisecond on an idle database, a few hundred
# under a big backlog of results, and more only when PostgreSQL is in trouble.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Timing:
    """A histogram of durations: how many fell in each bucket (not cumulative; the last one is
    above every bound), their sum and their count."""

    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), ending with +Inf, as Prometheus has it."""
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += n
            out.append((bound, running))
        return out


@dataclass
class Stats:
    """One server's figures since it started."""

    leases: Timing = field(default_factory=Timing)  # the lease statements of each batch
    results: Timing = field(default_factory=Timing)  # the result statements of each batch
    # (model name, outcome) → replicas: 'error' and 'late' when their result is stored,
    # 'valid' and 'invalid' when their duty settles, 'expired' when this server gives them
    # back (its reaper, a citizen gone). Others' releases (an operator's block) are not here.
    replicas: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter)
