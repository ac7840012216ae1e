"""The ``civic`` command: typer + rich. Parse, call one core function, render; no logic, no SQL."""
