"""The dashboard's overview, as HTML and as JSON, against a real PostgreSQL."""

from __future__ import annotations

from webkit import Client, dashboard

from civic.store import monitor


def test_overview_shows_the_status_page_and_its_json(database_url: str, alphabet) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        page = web.get("/")
        assert page.status == 200
        assert "alphabet" in page.text and "26" in page.text
        data = web.json("/")
        assert data["models"][0]["name"] == "alphabet"
        assert data["models"][0]["pending"] == 26
        assert web.get("/?format=json").json()["datasets"][0]["id"] == alphabet.id


def test_overview_follows_progress(database_url: str, alphabet, h) -> None:
    import asyncio

    with dashboard(database_url) as base:
        web = Client(base)
        assert web.json("/")["models"][0]["done"] == 0
        asyncio.run(h.settle_all(database_url))
        after = web.json("/")["models"][0]
        assert after["done"] == 26 and after["pending"] == 0
        assert after == monitor.status(database_url)["models"][0]


def test_overview_escapes_what_a_model_or_dataset_wrote(database_url: str, alphabet, h) -> None:
    h.execute(database_url, "UPDATE datasets SET source = %s", ("<script>alert(1)</script>.csv",))
    with dashboard(database_url) as base:
        page = Client(base).get("/")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.csv" in page.text


def test_pages_forbid_inline_scripts_and_framing(database_url: str) -> None:
    with dashboard(database_url) as base:
        page = Client(base).get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"


def test_unknown_page_is_404_in_html_and_json(database_url: str) -> None:
    with dashboard(database_url) as base:
        web = Client(base)
        assert web.get("/no-such-page").status == 404
