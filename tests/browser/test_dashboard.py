"""The dashboard in a real browser during a real run: `civic server run --web` with its citizens
as processes, a model slow enough to watch, and Debian's Chromium reading the pages.

Part A watches the overview refresh itself as progress moves. Part B is an operator: logs in,
pauses a dataset (no lease after the pause), resumes it, retries a failed duty from the
failures page; a citizen named ``<script>`` shows as text; the results page draws its chart.
``CIVIC_SCREENSHOTS=docs/images`` also writes the screenshots the docs show.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from faultkit import CIVIC, Cluster, Proc, free_port, numbers, wait_until

pytestmark = pytest.mark.timeout(900)

DUTIES = 240
SLEEP = 0.25  # seconds a duty: two citizens do a few a second, so the run lasts about a minute
FAILING = 3  # the record whose duty fails (max_attempts 1) until the test mends the model
SCRIPT = "<script>alert(1)</script>"  # a citizen's name: must show as text
WAIT = 120.0  # generous: a wait that fails only when what it waits for never happens
MS = int(WAIT * 1000)

MODEL = """\
import json, os, sys, time
records = json.load(open(sys.argv[1]))
time.sleep(%(sleep)s)
for r in records:
    if r["n"] == %(failing)d and not os.path.exists(%(mended)r):
        sys.exit("record %(failing)d: no square for this one")
json.dump([{"n": r["n"], "square": r["n"] ** 2} for r in records], open(sys.argv[2], "w"))
"""

# The Done cell of a model's row on the overview, found by its column's heading.
DONE = """(model) => {
  const table = document.querySelector("table.models");
  if (!table) return null;
  const col = [...table.querySelectorAll("thead th")].findIndex(
      (th) => th.textContent.trim() === "Done");
  for (const row of table.querySelectorAll("tbody tr")) {
    if (row.cells[0].textContent.trim().split(/\\s/)[0] === model)
      return Number(row.cells[col].textContent.replace(/[^0-9]/g, ""));
  }
  return null;
}"""


class Run:
    """A server with the dashboard beside it, two citizens (one named SCRIPT) and a dataset of
    DUTIES slow duties of the model ``square``, one of which fails."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.mended = cluster.public / "mended"  # the model stops failing once this exists
        folder = cluster.root / "models" / "square"
        folder.mkdir(parents=True)
        (folder / "civic.yaml").write_text(
            "name: square\nrun: python3 model.py {input} {output}\n"
            "input: {format: json, records_per_duty: 1}\n"
            "replication: 1\nmax_attempts: 1\ntimeout: 60\n")
        (folder / "model.py").write_text(MODEL % {"sleep": SLEEP, "failing": FAILING,
                                                  "mended": str(self.mended)})
        web = free_port()
        self.base = f"http://127.0.0.1:{web}"
        assert cluster.url  # the embedded PostgreSQL, before the server shares it
        self.server: Proc = cluster.start("server", [
            CIVIC, "server", "run", "--host", "127.0.0.1", "--port", str(cluster.port),
            "--grace", "3", "--web", f"127.0.0.1:{web}"])
        self.server.wait_for(f"listening on 127.0.0.1:{cluster.port}")
        self.server.wait_for(f"dashboard on {self.base}/")
        cluster.server = self.server
        cluster.add_model(folder)
        numbers(cluster.root / "numbers.json", DUTIES)
        imported = subprocess.run(  # from its folder: the pages show the file's name alone
            [CIVIC, "dataset", "import", "square", "numbers.json", "--json"],
            cwd=cluster.root, env=cluster.civic.env, capture_output=True, text=True, timeout=120)
        assert imported.returncode == 0, imported.stderr
        self.dataset = json.loads(imported.stdout)["id"]
        self.failing = cluster.sql("SELECT id FROM duties WHERE dataset_id = %s AND "
                                   "first_record = %s", (self.dataset, FAILING))[0]["id"]
        self.citizens = [cluster.agent("citizen-1"),
                         cluster.agent("script", args=["--name", SCRIPT])]

    def done(self) -> int:
        return self.cluster.progress(self.dataset)["done"]

    def now(self) -> Any:
        """The database's clock, read after whatever the test did last has committed."""
        return self.cluster.sql("SELECT clock_timestamp() AS t")[0]["t"]

    def leased_after(self, moment: Any) -> int:
        """Replicas of the dataset whose lease started after ``moment``."""
        return self.cluster.sql(
            "SELECT count(*) AS n FROM replicas r JOIN duties u ON u.id = r.duty_id "
            "WHERE u.dataset_id = %s AND r.leased_at > %s", (self.dataset, moment))[0]["n"]


def shown_done(page: Any) -> int | None:
    return page.evaluate(DONE, "square")


def wait_done_grows(page: Any, than: int) -> int:
    """Until the page (refreshing itself: never reloaded here) shows more than ``than`` done."""
    page.wait_for_function(f"(n) => ({DONE})('square') > n", arg=than, timeout=MS,
                           polling=250)
    return shown_done(page)


# ---------------------------------------------------------------------------------------------
# Part A: the overview (works on main's skeleton)
# ---------------------------------------------------------------------------------------------

def test_overview_shows_progress_move_without_reloading(cluster: Cluster, page: Any,
                                                        shoot) -> None:
    run = Run(cluster)
    wait_until(lambda: run.done() >= 1, WAIT, "a first duty done")
    page.goto(run.base + "/")
    first = shown_done(page)
    assert first is not None and first >= 1, page.content()[:2000]
    page.evaluate("window.civicTestMarker = 'still the same document'")
    later = wait_done_grows(page, first)
    assert later > first
    # civic.js swapped the new figures in: the document (and this marker) is the one loaded
    assert page.evaluate("window.civicTestMarker") == "still the same document"
    # what the page says is at most what the database says now (the page's read came first)
    assert later <= run.done()
    assert page.locator("table.models").get_by_text("square").count() >= 1
    bar = page.locator("table.models .bar .done").first
    assert float(bar.get_attribute("data-width")) > 0
    assert "width" in (bar.get_attribute("style") or "")  # set by civic.js (the CSP allows it)
    shoot(page, "dashboard-overview", doc=True)


# ---------------------------------------------------------------------------------------------
# Part B: an operator logs in, pauses and resumes a dataset, retries a failed duty; names a
# citizen chose show as text; the results page draws its chart.
# ---------------------------------------------------------------------------------------------

def operator_token(cluster: Cluster, name: str) -> str:
    """`civic operator add NAME` prints the operator's token (its last line)."""
    done = cluster.civic("operator", "add", name, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stdout
    return lines[-1].split()[-1]


def log_in(page: Any, base: str, name: str, token: str) -> None:
    page.goto(base + "/login")
    page.fill("#name", name)
    page.fill("#token", token)
    click(page, "form:has(#token)", "Log in")
    assert page.get_by_role("button", name="Log out").count() == 1, page.content()[:2000]


def form(action: str) -> str:
    """The selector of the form posting to ``action`` (a path of the contract)."""
    return f'form[action="{action}"]'


def click(page: Any, form_selector: str, label: str) -> None:
    """Click the button so labelled in the form so selected, and wait for the page the form's
    post redirects to."""
    with page.expect_navigation():
        page.locator(form_selector).get_by_role("button", name=label, exact=True).click()
    page.wait_for_load_state()


def test_operator_pauses_resumes_and_retries_in_the_browser(cluster: Cluster, page: Any,
                                                            shoot) -> None:
    run = Run(cluster)
    token = operator_token(cluster, "lab")
    wait_until(lambda: run.done() >= 5, WAIT, "some duties done")

    # Read-only first: no buttons; then log in.
    assert page.goto(f"{run.base}/datasets/{run.dataset}").status == 200
    assert page.locator(form(f"/datasets/{run.dataset}/pause")).count() == 0
    log_in(page, run.base, "lab", token)

    # Pause: from the moment it committed, no lease of the dataset starts.
    page.goto(f"{run.base}/datasets/{run.dataset}")
    click(page, form(f"/datasets/{run.dataset}/pause"), "Pause")
    paused = run.now()  # the action answered (303 after its commit): the pause has committed
    assert cluster.sql("SELECT paused_at FROM datasets WHERE id = %s",
                       (run.dataset,))[0]["paused_at"] is not None
    assert page.locator(form(f"/datasets/{run.dataset}/resume")).count() == 1
    assert "paused" in page.locator("main").inner_text().lower()
    # The replicas out come back and count, and each citizen asks again at once: were the
    # pause ignored, a new lease would follow, and none may have started since the pause.
    wait_until(lambda: not cluster.sql(
        "SELECT 1 FROM replicas r JOIN duties u ON u.id = r.duty_id WHERE u.dataset_id = %s "
        "AND r.state = 'leased' LIMIT 1", (run.dataset,)), WAIT, "the replicas out to return")
    held = run.done()
    quiet = run.now()
    assert run.leased_after(paused) == 0
    assert cluster.progress(run.dataset)["pending"] > 0, "the run finished before the pause"

    # Resume: progress moves again, on the overview too.
    page.goto(f"{run.base}/datasets/{run.dataset}")
    click(page, form(f"/datasets/{run.dataset}/resume"), "Resume")
    wait_until(lambda: run.leased_after(quiet) > 0, WAIT, "leases after the resume")
    page.goto(run.base + "/")
    wait_done_grows(page, held)

    # The failed duty: from /failures to its page, then Retry (the model is mended first).
    wait_until(lambda: cluster.sql("SELECT state::text AS s FROM duties WHERE id = %s",
                                   (run.failing,))[0]["s"] == "failed", WAIT, "the duty to fail")
    page.goto(run.base + "/failures")
    assert "square" in page.locator("main").inner_text()
    with page.expect_navigation():
        page.locator(f'main a[href="/duties/{run.failing}"]').first.click()
    assert page.url.endswith(f"/duties/{run.failing}")
    assert "no square for this one" in page.locator("main").inner_text()  # its stderr tail
    run.mended.write_text("mended")
    before = run.now()  # the duty is failed: nothing leases it until the retry
    click(page, form(f"/duties/{run.failing}/retry"), "Retry")
    assert cluster.sql("SELECT state::text AS s FROM duties WHERE id = %s",
                       (run.failing,))[0]["s"] in ("pending", "done")
    wait_until(lambda: cluster.sql("SELECT state::text AS s FROM duties WHERE id = %s",
                                   (run.failing,))[0]["s"] == "done", WAIT,
               "the retried duty to be done")
    assert cluster.sql("SELECT count(*) AS n FROM replicas WHERE duty_id = %s AND leased_at > %s",
                       (run.failing, before))[0]["n"] >= 1

    # A citizen's name is text, everywhere it shows (and no dialog opened: the page fixture).
    page.goto(run.base + "/citizens")
    assert page.get_by_text(SCRIPT, exact=True).count() >= 1
    assert not [s for s in page.locator("script").all_inner_texts() if "alert(1)" in s]
    with page.expect_navigation():
        page.locator("main a", has_text=SCRIPT).first.click()
    assert page.get_by_text(SCRIPT, exact=True).count() >= 1, page.url

    # The results of the model, drawn: a scatter of n against its square.
    cluster.wait_finished(run.dataset, 300)
    page.goto(f"{run.base}/models/square/results?dataset={run.dataset}&x=n&y=square"
              "&chart=scatter")
    page.wait_for_function("() => { const c = document.querySelector('canvas[data-chart]');"
                           " return c && window.Chart && Chart.getChart(c); }", timeout=MS)
    shoot(page, "dashboard-results", doc=True)
    page.goto(run.base + "/")
    shoot(page, "dashboard-overview-finished")


def test_screenshots_land_where_asked(tmp_path: Path, page: Any, shoot, monkeypatch) -> None:
    """The documentation's images go to $CIVIC_SCREENSHOTS only when asked for."""
    page.set_content("<p>hello</p>")
    assert shoot(page, "plain").exists()
    target = tmp_path / "docs-images"
    monkeypatch.setenv("CIVIC_SCREENSHOTS", str(target))
    shoot(page, "not-for-docs")
    assert not target.exists()
    shoot(page, "for-docs", doc=True)
    assert re.match(rb"\x89PNG", (target / "for-docs.png").read_bytes())
