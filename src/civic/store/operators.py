"""Operators of the web dashboard: their tokens and their login sessions (synchronous, like
``catalog``).

An operator's token is shown once and kept only as a sha256, as citizens' credentials are (it
is 256 random bits: a slow hash would add nothing). Sessions live in PostgreSQL, so every
server of the project honours a login and a restart logs nobody out; a session's cookie value
is kept hashed too. Logins, failed logins and logouts leave audit rows; tokens never do.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from civic.errors import NeedsConfirmation, NotFound, UsageError
from civic.store import audit
from civic.store.db import connect, transaction
from civic.store.queries import q

SESSION_TTL = 12 * 3600  # seconds a session lasts unused; each use slides it forward
TOUCH_EVERY = 60.0  # seconds between two writes of a session's use (not one per request)
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# Compared against when the name is unknown, so that an unknown name costs what a wrong token
# costs: the same query, one hash, one comparison.
_DUMMY = hashlib.sha256(b"no operator has this token").hexdigest()


@dataclass(frozen=True)
class Operator:
    """An operator in office, as ``civic operator list`` shows them."""

    name: str
    created_at: datetime
    sessions: int  # logins open now
    last_seen_at: datetime | None


@dataclass(frozen=True)
class Session:
    """A logged-in browser: whose, its CSRF token, until when."""

    operator: str
    csrf: str
    expires_at: datetime


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _log(conn: Any, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    """An audit row for a login or logout. No NOTIFY: servers have nothing to honour, and a
    stream of failed logins must not wake them."""
    conn.execute("INSERT INTO audit (actor, action, target, detail) VALUES (%s, %s, %s, %s)",
                 (actor, action, target, Jsonb(detail)))


# ---------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------

def add_operator(url: str, name: str) -> str:
    """Create an operator and return their token, which is stored only hashed (shown once)."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"operator name {name!r} must be 1-63 of a-z 0-9 _ . - starting with "
                         "a-z or 0-9")
    token = secrets.token_urlsafe(32)
    with transaction(url) as conn:
        if conn.execute(q("insert_operator"), {"name": name, "token_sha256": _hash(token)}
                        ).fetchone() is None:
            raise UsageError(f"operator {name!r} exists already (civic operator remove "
                             f"{name} first to give them a new token)")
        audit.record(conn, "operator add", f"operator {name}")
    return token


def list_operators(url: str) -> list[Operator]:
    """The operators in office, by name."""
    with connect(url, row_factory=class_row(Operator)) as conn:
        return conn.execute(q("list_operators")).fetchall()


def remove_operator(url: str, name: str, *, yes: bool = False) -> int:
    """Remove an operator: their token logs in no more and their open sessions end now.
    Returns how many sessions were closed. Without ``yes``, NeedsConfirmation names them."""
    with transaction(url) as conn:
        conn.row_factory = dict_row
        if conn.execute(q("operator_named"), {"name": name}).fetchone() is None:
            raise NotFound(f"no operator named {name!r}; see civic operator list")
        if not yes:
            raise NeedsConfirmation(f"operator {name} would be removed and logged out")
        closed = conn.execute(q("remove_operator"), {"name": name}).fetchone()["sessions"]
        audit.record(conn, "operator remove", f"operator {name}", {"sessions": closed})
    return closed


def check(url: str, name: str, token: str) -> str | None:
    """The operator's name when ``token`` is theirs, else None — in the same time whether the
    name exists or not."""
    given = _hash(token)
    if not _NAME.fullmatch(name):
        name = ""  # no operator's name, asked all the same (a NUL would fail the query)
    with connect(url) as conn:
        row = conn.execute(q("operator_named"), {"name": name}).fetchone()
    expected = row[2] if row is not None else _DUMMY
    good = hmac.compare_digest(given.encode(), expected.encode())
    return row[1] if good and row is not None else None


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------

def log_in(url: str, name: str, token: str, address: str = "") -> tuple[str, Session] | None:
    """Check ``name`` and ``token`` and open a session: (cookie value, session), or None when
    they are wrong (audited either way, without the token)."""
    operator = check(url, name, token)
    with transaction(url) as conn:
        conn.row_factory = dict_row
        if operator is None:
            target = f"operator {name}" if _NAME.fullmatch(name) else "operator ?"
            _log(conn, "web", "login failed", target, {"address": address})
            return None
        row = conn.execute(q("operator_named"), {"name": operator}).fetchone()
        if row is None:  # removed between the check and now
            return None
        conn.execute(q("reap_sessions"))
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = conn.execute(q("open_session"), {
            "id_sha256": _hash(sid), "operator_id": row["id"], "csrf": csrf,
            "ttl": SESSION_TTL}).fetchone()["expires_at"]
        _log(conn, f"web:{operator}", "login", f"operator {operator}", {"address": address})
    return sid, Session(operator, csrf, expires)


def find_session(url: str, sid: str) -> Session | None:
    """The session of cookie value ``sid`` if it is still open (its expiry slides forward),
    else None."""
    key = _hash(sid)
    with connect(url, row_factory=dict_row) as conn:
        row = conn.execute(q("find_session"), {"id_sha256": key}).fetchone()
        if row is None:
            return None
        if row["idle"] >= TOUCH_EVERY:
            conn.execute(q("touch_session"), {"id_sha256": key, "ttl": SESSION_TTL})
    return Session(row["operator"], row["csrf"], row["expires_at"])


def log_out(url: str, sid: str, address: str = "") -> str | None:
    """Close the session of cookie value ``sid``; returns its operator (None: no such
    session)."""
    with transaction(url) as conn:
        row = conn.execute(q("close_session"), {"id_sha256": _hash(sid)}).fetchone()
        if row is None:
            return None
        _log(conn, f"web:{row[0]}", "logout", f"operator {row[0]}", {"address": address})
    return row[0]
