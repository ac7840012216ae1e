"""What one tree does in a process of its own, for run.py's before/after comparisons.

Run with ``PYTHONPATH=TREE/src`` so that ``civic`` is that tree's (the baseline's or this one's):

- ``python benchmarks/variant.py import URL MODEL PATH RECORDS_PER_DUTY``: the tree's
  ``catalog.import_dataset`` of PATH (``again=True``: the same file is imported every run),
  timed around the call only (not this interpreter's start-up); prints one JSON line:
  ``{"id": …, "seconds": …, "civic": the package's directory}``.
- ``python benchmarks/variant.py citizens ADDRESS PREFETCH HOMES LOGS NAME…``: the tree's
  ``ProcessRuntime`` and agent. Reads the join token from the first line of stdin, prints
  ``ready`` and the package's directory once imported, spawns the citizens when it reads ``go`` (so the caller times from
  spawning, as an operator's `civic citizen run` starts them, not from this interpreter's
  start-up), and stops them (SIGTERM, as the runtime does) when stdin closes.

Only the API both trees share is used: ``import_dataset(url, model, path, again=,
records_per_duty=)``, ``Joining(address, prefetch, token=)``, ``ProcessRuntime(homes, logs)``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def import_(url: str, model: str, path: str, per_duty: str) -> None:
    from civic.store import catalog

    started = time.perf_counter()
    imported = catalog.import_dataset(url, model, Path(path), again=True,
                                      records_per_duty=int(per_duty))
    seconds = time.perf_counter() - started
    print(json.dumps({"id": imported.id, "seconds": seconds, "civic": _civic()}), flush=True)


def citizens(address: str, prefetch: str, homes: str, logs: str, *names: str) -> None:
    from civic.citizen.runtimes import Joining, ProcessRuntime

    token = sys.stdin.readline().strip() or None
    runtime = ProcessRuntime(Path(homes), Path(logs))
    joining = Joining(address, int(prefetch), token=token)
    print(f"ready {_civic()}", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    spawned = runtime.spawn(joining, list(names))
    try:
        sys.stdin.read()  # until the caller closes it: the duties are done
    finally:
        runtime.stop(spawned)


def _civic() -> str:
    """Where this process's ``civic`` package is: the caller checks it is the tree it meant."""
    import civic

    return str(Path(civic.__file__).resolve().parent)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"import": import_, "citizens": citizens}[command](*args)
