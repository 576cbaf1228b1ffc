"""The status page in a real browser: Debian's Chromium, headless, driven by
Playwright, against ``ecloud web`` during a real local 300-task run
(``ecloud run``: SQLite log, embedded broker, local worker processes).

The page must show the log's counts as tasks finish, the time slider must
bring back an earlier seq's counts, and a screenshot is left in the
artifacts folder (:func:`tests.support.web_helpers.artifacts_dir`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store
from ecloud.projections.state import TASK_STATUSES
from tests.support.web_helpers import (
    FAILING,
    TOTAL,
    Web,
    artifacts_dir,
    gated_dag,
    start_run,
    stop_run,
    wait_for_tasks,
    wait_until_held,
)

CHROMIUM = "/usr/bin/chromium"
#: as the machine's notes advise: no background connections on a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 120_000

#: what the page shows, read in one go (one drawn state: seq and counts agree)
READ_PAGE = """() => ({
  seq: Number(document.getElementById("position").textContent.match(/seq (\\d+)/)[1]),
  mode: document.getElementById("mode").textContent,
  counts: Object.fromEntries(STATES.map((s) => [s,
    Number(document.getElementById("count-" + s).textContent)])),
})""".replace("STATES", str(list(TASK_STATUSES)))


def counts_at(db: str, seq: int) -> dict[str, int]:
    with open_store(db, create=False) as store:
        state = load_state(store, seq)
    return {s: state.counts[s] for s in TASK_STATUSES}


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
                    "(apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_page_follows_a_local_run_and_its_slider_shows_the_past(tmp_path: Path, browser) -> None:
    task_file, gate = gated_dag(tmp_path)
    db = f"sqlite:///{tmp_path}/ecloud.db"
    run = start_run(tmp_path, task_file, "--local", "3", "--slots", "2")
    web = None
    try:
        page_errors: list[str] = []
        wait_for_tasks(db)
        web = Web(tmp_path, db)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        page.goto(web.url)

        # 1. while the run holds at the gate: the sims are done, one failed
        wait_until_held(web)
        page.wait_for_function(
            f"() => document.getElementById('count-succeeded')?.textContent === '{TOTAL - 60}'"
            " && document.getElementById('count-failed').textContent === '1'"
            " && Number(document.getElementById('count-running').textContent) > 0",
            timeout=WAIT_MS)
        page.wait_for_selector("#dag-svg g.node")
        held = page.evaluate(READ_PAGE)
        assert held["mode"] == "live"
        assert held["counts"] == counts_at(db, held["seq"])
        assert held["counts"]["blocked"] > 0  # the failed sim's post and what follows it
        page.wait_for_function(  # its stderr tail is on the page
            "() => document.getElementById('failures').textContent.includes('mesh file missing')",
            timeout=WAIT_MS)
        assert FAILING in page.text_content("#failures")
        assert "sim-#" in page.text_content("#dag")  # 300 tasks: grouped by name pattern
        shot = tmp_path / "status-page-during-run.png"
        page.screenshot(path=str(shot), full_page=True)

        # 2. open the gate: the page follows the run to its end
        gate.touch()
        page.wait_for_function(
            "() => Number(document.getElementById('count-running').textContent) === 0"
            " && Number(document.getElementById('count-waiting').textContent) === 0"
            " && Number(document.getElementById('count-ready').textContent) === 0"
            " && Number(document.getElementById('count-dispatched').textContent) === 0",
            timeout=WAIT_MS)
        run.wait(120)
        assert run.returncode == 1, run.stderr.read()  # one task failed for good
        page.wait_for_function(  # the page catches up with the log's last events
            f"() => document.getElementById('position').textContent.startsWith("
            f"'seq ' + {web.json('/healthz')['head']} + ' ')", timeout=WAIT_MS)
        page.wait_for_function(  # and so does the DAG, within its refresh interval
            "() => document.querySelector('#dag g.node[data-key=\"post-#\"]')"
            "?.textContent.includes('47 succeeded')", timeout=WAIT_MS)
        end = page.evaluate(READ_PAGE)
        assert end["counts"] == counts_at(db, end["seq"])
        assert end["counts"]["succeeded"] > held["counts"]["succeeded"]

        # 3. the slider goes back to the held moment and shows its counts
        page.evaluate(f"""() => {{
            const slider = document.getElementById("slider");
            slider.value = {held['seq']};
            slider.dispatchEvent(new Event("input"));
        }}""")
        page.wait_for_function(
            f"() => document.getElementById('mode').textContent === 'history'"
            f" && document.getElementById('position').textContent.startsWith('seq {held['seq']} ')",
            timeout=WAIT_MS)
        past = page.evaluate(READ_PAGE)
        assert past["seq"] == held["seq"]
        assert past["counts"] == held["counts"] == counts_at(db, held["seq"])
        # the DAG goes back too: the posts are running again, none succeeded
        page.wait_for_function(
            "() => { const n = document.querySelector('#dag g.node[data-key=\"post-#\"]');"
            " return n && n.textContent.includes('running')"
            " && !n.textContent.includes('succeeded'); }", timeout=WAIT_MS)
        page.screenshot(path=str(tmp_path / "status-page-history.png"), full_page=True)

        # 4. and back to live
        page.click("#live-button")
        page.wait_for_function("() => document.getElementById('mode').textContent === 'live'",
                               timeout=WAIT_MS)
        assert page.evaluate(READ_PAGE)["counts"] == end["counts"]
        assert not page_errors
        for name in ("status-page-during-run.png", "status-page-history.png"):
            shutil.copy(tmp_path / name, artifacts_dir() / name)
    finally:
        gate.touch()
        stop_run(run)
        if web is not None:
            web.stop()
