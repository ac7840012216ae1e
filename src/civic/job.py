"""The whole job on one machine: database, server, model, dataset, citizens, results.

This is what ``civic run DIR`` does; it sits above the server, the citizens and the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from civic.citizen.runtimes import Joining, ProcessRuntime
from civic.config import Settings
from civic.errors import CivicError, UsageError
from civic.models import load_manifest
from civic.server.runner import Beside, ServerThread
from civic.server.service import ServerOptions
from civic.store import catalog, control
from civic.store.states import DutyState

POLL = 0.5  # seconds between progress reads


@dataclass(frozen=True)
class JobReport:
    """How a job ended: the model and dataset used and the duties by state."""

    model: catalog.ModelAdded
    dataset: catalog.DatasetImported
    progress: dict[str, int]
    unfinished: list[catalog.UnfinishedDuty]

    @property
    def complete(self) -> bool:
        return self.progress[DutyState.DONE] == self.progress["total"]


def run_job(url: str, settings: Settings, model_dir: Path, *, dataset: Path | None,
            citizens: int | None, again: bool = False,
            on_progress: Callable[[dict[str, int]], None] | None = None,
            on_event: Callable[[str], None] | None = None,
            beside: Beside | None = None) -> JobReport:
    """Add the model, import the dataset (or resume the one with the same bytes), compute it
    with citizens of this job's own, and wait until no duty of it can progress. ``beside``
    runs beside the job's server while it computes (``civic run --web``: the dashboard)."""
    event = on_event or (lambda _: None)
    manifest = load_manifest(model_dir)  # fail on a bad manifest before anything starts
    # A duty needs `replication` different citizens: with fewer, the run could never finish.
    citizens = citizens or max(os.cpu_count() or 1, manifest.replication)
    if citizens < manifest.replication:
        raise UsageError(f"{manifest.name} has replication {manifest.replication}: each duty "
                         f"needs {manifest.replication} different citizens, so --citizens must "
                         f"be at least {manifest.replication}")
    if dataset is None:
        if manifest.dataset is None:
            raise UsageError(f"{model_dir / 'civic.yaml'} names no dataset; pass --dataset FILE")
        dataset = model_dir / manifest.dataset
    if not dataset.is_file():
        raise UsageError(f"{dataset}: no such file")

    added = catalog.add_model(url, model_dir)
    event(f"model {added.name} v{added.version}" + ("" if added.changed else " (unchanged)"))
    resumed = None if again else catalog.resumable_dataset(url, added, dataset)
    # One machine by nature: its citizens are the distinct sources a quorum can have.
    imported = resumed or catalog.import_dataset(url, added.name, dataset, again=True,
                                                 distinct="citizen")
    progress = catalog.progress(url, imported.id)
    if resumed is None:
        event(f"dataset {imported.id}: {imported.records} records → {imported.duties} duties, "
              f"replication {imported.replication}, quorum {imported.quorum}")
    else:
        finished = progress[DutyState.PENDING] == 0
        event(f"dataset {imported.id}, from the same file and model version, was "
              f"{'computed' if finished else 'begun'} by an earlier run: "
              f"{'showing' if finished else 'resuming'} it (--again computes it afresh)")
    if progress[DutyState.PENDING] == 0:  # nothing to start
        return JobReport(added, imported, progress, catalog.unfinished_duties(url, imported.id))
    with contextlib.ExitStack() as stack:
        names = _claim_names(stack, settings.citizens_dir, f"{socket.gethostname()}-run",
                             citizens)
        server = ServerThread(url, ServerOptions(host="127.0.0.1", port=0, grace=5.0,
                                                 datasets=(imported.id,)), beside)
        host, port = server.start()
        stack.callback(server.stop)
        runtime = ProcessRuntime(settings.citizens_dir, log_dir=settings.home / "logs")
        spawned = runtime.spawn(Joining(f"{host}:{port}", token=catalog.join_token(url)), names)
        stack.callback(runtime.stop, spawned)
        event(f"server on {host}:{port}, {citizens} citizens (logs in {settings.home / 'logs'})")
        stalls = _Stalls(url, imported.id, event)
        while True:
            progress = catalog.progress(url, imported.id)
            if on_progress:
                on_progress(progress)
            if progress[DutyState.PENDING] == 0:
                break
            if not any(c.running for c in spawned):
                raise CivicError(f"every citizen exited; see {settings.home / 'logs'}")
            stalls.check()
            time.sleep(POLL)
    return JobReport(added, imported, progress, catalog.unfinished_duties(url, imported.id))


class _Stalls:
    """Fails the duties that no citizen of the run can ever compute, saying why, so a run
    never waits on work nobody can do.

    A reason must hold on two checks in a row (a citizen reconnecting, a lease being reaped
    can make one reading wrong), and a duty waiting for distinct citizens counts as stuck only
    when none of its replicas is still out (one that fails would free its citizen).
    """

    EVERY = 2.0  # seconds between checks

    def __init__(self, url: str, dataset_id: int, event: Callable[[str], None]) -> None:
        self.url, self.dataset_id, self.event = url, dataset_id, event
        self.last = 0.0
        self.seen: set[tuple[str, int]] = set()  # (reason, duty id or 0 for all) seen last time
        self.told: set[str] = set()

    def check(self) -> None:
        if time.monotonic() - self.last < self.EVERY:
            return
        self.last = time.monotonic()
        held = control.held(self.url, self.dataset_id)
        if held is not None:  # the operator's doing: wait for the resume, fail nothing
            if held not in self.told:
                self.told.add(held)
                self.event(held)
            self.seen = set()
            return
        self.told = {t for t in self.told if "paused" not in t}  # say it again if paused again
        now: set[tuple[str, int]] = set()
        for wait in catalog.waiting(self.url, self.dataset_id):
            if wait.kind == "no-citizen":
                continue  # starting up; "every citizen exited" covers the rest
            if wait.kind == "resting":  # they come back after their cool-down
                if wait.reason not in self.told:
                    self.told.add(wait.reason)
                    self.event(f"{wait.duties} duties wait: {wait.reason}")
                continue
            if wait.kind == "distinct":
                now |= {(wait.reason, i) for i in catalog.unleased(self.url, wait.duty_ids)}
            else:
                now.add((wait.reason, 0))
        for reason, duty_id in now & self.seen:
            catalog.fail_duties(self.url, self.dataset_id,
                                f"no citizen of this run can compute it: {reason}",
                                None if duty_id == 0 else [duty_id])
        self.seen = now - self.seen


def _claim_names(stack: contextlib.ExitStack, directory: Path, prefix: str,
                 count: int) -> list[str]:
    """The first ``count`` citizen names PREFIX-N that no other job on this home holds now.

    A job holds a lock file per name for as long as it runs, so two jobs at once never share a
    citizen identity or bundle cache, and later jobs reuse the same few identities.
    """
    directory.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    index = 0
    while len(names) < count:
        index += 1
        lock = stack.enter_context(open(directory / f"{prefix}-{index}.lock", "a"))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # another job's citizen
        names.append(f"{prefix}-{index}")
    return names
