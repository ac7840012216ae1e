"""Find and remove what one CIVIC instance made in Docker, by its label."""

from __future__ import annotations

from typing import Any

LABEL = "civic.instance"


def remove_instance(engine: Any, instance: str) -> None:
    filters = {"label": f"{LABEL}={instance}"}
    for container in engine.containers.list(all=True, filters=filters):
        container.remove(force=True)
    for volume in engine.volumes.list(filters=filters):
        volume.remove(force=True)
    for network in engine.networks.list(filters=filters):
        network.remove()


def leftovers(engine: Any, instance: str) -> list[str]:
    filters = {"label": f"{LABEL}={instance}"}
    return ([c.name for c in engine.containers.list(all=True, filters=filters)]
            + [v.name for v in engine.volumes.list(filters=filters)]
            + [n.name for n in engine.networks.list(filters=filters)])
