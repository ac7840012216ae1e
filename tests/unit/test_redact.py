"""Passwords never reach messages, whatever form the connection string has."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from civic.store.db import redact

# A marker prefix, so a password can never be a chance substring of the rest of the string.
PASSWORDS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(
    lambda s: "S3cr&t" + s)


@settings(max_examples=300, deadline=None)
@given(password=PASSWORDS)
def test_no_form_of_connection_string_keeps_its_password(password: str) -> None:
    forms = [
        make_conninfo(host="db", port=5432, user="civic", password=password, dbname="civic"),
        f"postgresql://civic:{quote(password, safe='')}@db:5432/civic",
        f"postgresql://civic@db/civic?sslmode=require&password={quote(password, safe='')}",
    ]
    for form in forms:
        shown = redact(form)
        assert password not in shown and quote(password, safe="") not in shown, (form, shown)


def test_what_is_not_a_secret_stays_readable() -> None:
    assert redact("postgresql://civic:pw@db:5432/civic") == "postgresql://civic:***@db:5432/civic"
    assert redact("host=db password=pw dbname=civic") == "host=db password=*** dbname=civic"
    assert redact("postgresql:///civic?host=/run/pg") == "postgresql:///civic?host=/run/pg"
