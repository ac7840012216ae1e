"""One error tree for CIVIC. Each class says when it is raised; the CLI maps them to exit codes.

Standard library only: the citizen agent imports this module through ``civic.protocol``.
"""

from __future__ import annotations


class CivicError(Exception):
    """Raised when CIVIC cannot do what was asked; the message is meant for the user."""

    exit_code = 1


class UsageError(CivicError):
    """Raised when an argument, flag or file given by the user is invalid."""

    exit_code = 2


class ManifestError(UsageError):
    """Raised when a model's civic.yaml is missing, unreadable or invalid."""

    def __init__(self, path: object, message: str, key: str | None = None) -> None:
        self.path, self.key = str(path), key
        where = f"{self.path}: key '{key}'" if key else self.path
        super().__init__(f"{where}: {message}")


class DatasetError(UsageError):
    """Raised when a dataset file cannot be read or a record in it cannot be parsed."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        self.path, self.line = str(path), line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class DuplicateDataset(UsageError):
    """Raised when a dataset file is identical to one already imported for the model."""

    def __init__(self, message: str, dataset_id: int) -> None:
        self.dataset_id = dataset_id
        super().__init__(message)


class NeedsConfirmation(UsageError):
    """Raised when a destructive operation would delete results or work under way and was not
    confirmed (``--yes``, or a prompt on a terminal); keeps what it would do in ``plan``."""

    def __init__(self, question: str, plan: object = None) -> None:
        self.question, self.plan = question, plan
        super().__init__(f"{question}; nothing removed — pass --yes to remove it")


class NotFound(CivicError):
    """Raised when a model, dataset or citizen named by the user does not exist."""

    exit_code = 3


class StoreError(CivicError):
    """Raised when PostgreSQL cannot be reached or refuses an operation."""

    exit_code = 4


class AddressInUse(CivicError):
    """Raised when the server cannot listen because the address is taken."""

    exit_code = 5


class Refused(CivicError):
    """Raised when a peer's credential or join token is refused."""

    exit_code = 7


class Incompatible(Refused):
    """Raised when a citizen and a server speak no protocol version in common."""


class DockerError(CivicError):
    """Raised when the Docker engine is missing, refuses access or fails an operation."""

    exit_code = 8


class RunIncomplete(CivicError):
    """Raised when a run ends with duties that have no canonical result."""

    exit_code = 6


class ProtocolError(CivicError):
    """Raised when a peer sends bytes that are not a valid CIVIC frame; keeps the bytes at fault."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        self.data = data[:256]
        super().__init__(message)


class ModelFailed(CivicError):
    """Raised inside a citizen when fetching or building a model failed; keeps its console tail."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        self.stderr_tail = stderr_tail
        super().__init__(message)


class BundleChanged(ModelFailed):
    """Raised inside a citizen when a cached bundle changed on disk since it was checked."""
