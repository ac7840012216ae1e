"""The whole job on one machine: database, server, model, dataset, citizens, results.

This is what ``civic run DIR`` does; it sits above the server, the citizens and the store.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from civic.citizen.runtimes import Joining, ProcessRuntime
from civic.config import Settings
from civic.errors import CivicError, UsageError
from civic.models import load_manifest
from civic.server.runner import ServerThread
from civic.server.service import ServerOptions
from civic.store import catalog

POLL = 0.5  # seconds between progress reads


@dataclass(frozen=True)
class JobReport:
    """How a job ended: the model and dataset used and the duties by state."""

    model: catalog.ModelAdded
    dataset: catalog.DatasetImported
    progress: dict[str, int]
    unfinished: list[dict[str, Any]]

    @property
    def complete(self) -> bool:
        return self.progress["done"] == self.progress["total"]


def run_job(url: str, settings: Settings, model_dir: Path, *, dataset: Path | None,
            citizens: int | None, on_progress: Callable[[dict[str, int]], None] | None = None,
            on_event: Callable[[str], None] | None = None) -> JobReport:
    """Add the model, import the dataset, compute it with local citizens and wait for the end."""
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
    # One machine by nature: its citizens are the distinct sources a quorum can have.
    imported = catalog.import_dataset(url, added.name, dataset, distinct="citizen")
    event(f"dataset {imported.id}: {imported.records} records → {imported.duties} duties, "
          f"replication {imported.replication}, quorum {imported.quorum}")

    server = ServerThread(url, ServerOptions(host="127.0.0.1", port=0, grace=5.0))
    host, port = server.start()
    runtime = ProcessRuntime(settings.citizens_dir, log_dir=settings.home / "logs")
    names = [f"{socket.gethostname()}-run-{i}" for i in range(1, citizens + 1)]
    spawned = []
    try:
        spawned = runtime.spawn(Joining(f"{host}:{port}", token=catalog.join_token(url)), names)
        event(f"server on {host}:{port}, {citizens} citizens (logs in {settings.home / 'logs'})")
        while True:
            progress = catalog.progress(url, imported.id)
            if on_progress:
                on_progress(progress)
            if progress["pending"] == 0:
                break
            if not any(c.running for c in spawned):
                raise CivicError(f"every citizen exited; see {settings.home / 'logs'}")
            time.sleep(POLL)
    finally:
        runtime.stop(spawned)
        server.stop()
    return JobReport(added, imported, progress, catalog.unfinished_duties(url, imported.id))
