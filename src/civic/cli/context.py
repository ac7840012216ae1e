"""The one object every command works through: settings, consoles and the database URL."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.table import Table

from civic import store
from civic.config import Settings


@dataclass
class Context:
    """Settings plus the consoles output goes to (tests replace them)."""

    settings: Settings
    out: Console = field(default_factory=lambda: Console(soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))
    _url: str | None = None

    def database_url(self, override: str | None = None) -> str:
        """The database to use (started if embedded), migrated to the current schema."""
        if self._url is None:
            url = override or self.settings.database_url or store.embedded_url(self.settings.home)
            store.migrate(url)
            self._url = url
        return self._url

    def print_json(self, data: Any) -> None:
        """Machine-readable output for scripts: plain JSON on stdout, nothing else."""
        self.out.file.write(json.dumps(data, default=_plain, indent=2) + "\n")

    def listing(self, rows: list[Any], *, json: bool, empty: str, columns: tuple[str, ...],
                cells: Callable[[Any], list[str]], as_json: Any = None) -> None:
        """Print a listing: JSON for scripts (``as_json``, else the rows), a hint on stderr
        when there is nothing, else a table."""
        if json:
            self.print_json(rows if as_json is None else as_json)
        elif not rows:
            self.note(empty)
        else:
            table = Table(*columns)
            for row in rows:
                table.add_row(*cells(row))
            self.out.print(table)

    def note(self, message: str) -> None:
        """A human remark on stderr, so stdout stays clean for pipes."""
        self.err.print(message, highlight=False)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")
