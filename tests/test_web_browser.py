"""The status page in a real browser: Debian's Chromium, headless, driven by
Playwright, against ``ecloud web`` during a real local 300-task run
(``ecloud run``: SQLite log, embedded broker, local worker processes), on a
desktop (1400x900) and a phone (390x844) at once.

The page must show the log's counts as tasks finish; fit a phone without
scrolling sideways; open a failing task's page - with its stderr - from the
task list and from its DAG group; keep a running task's page live; and its
time slider must bring back an earlier seq's counts, jump to a failure and
to a time (typed, or a click on the throughput chart). Screenshots are left
in the artifacts folder (:func:`tests.support.web_helpers.artifacts_dir`);
the README's are copies of them."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

import pytest

from ecloud.events import types as ev
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
DESKTOP = {"viewport": {"width": 1400, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}
STDERR = "mesh file missing"

#: what the page shows, read in one go (one drawn state: seq and counts agree)
READ_PAGE = """() => ({
  seq: Number(document.getElementById("position").textContent.match(/seq (\\d+)/)[1]),
  mode: document.getElementById("mode").textContent,
  counts: Object.fromEntries(STATES.map((s) => [s,
    Number(document.getElementById("count-" + s).textContent)])),
})""".replace("STATES", str(list(TASK_STATUSES)))

#: the document is no wider than the window: nothing scrolls sideways
FITS = "() => document.documentElement.scrollWidth <= window.innerWidth"

#: texts of DAG nodes that reach past their node's box
OVERFLOWING_LABELS = """() => [...document.querySelectorAll("#dag-svg g.node")].flatMap((g) => {
  const box = g.querySelector("rect.frame").getBBox();
  return [...g.querySelectorAll("text")].filter((t) => {
    const b = t.getBBox();
    return b.x < box.x || b.x + b.width > box.x + box.width;
  }).map((t) => t.textContent);
})"""


def counts_at(db: str, seq: int) -> dict[str, int]:
    with open_store(db, create=False) as store:
        state = load_state(store, seq)
    return {s: state.counts[s] for s in TASK_STATUSES}


def failure_seq(db: str) -> int:
    """The seq of the failing sim's report (the run's one failure)."""
    with open_store(db, create=False) as store:
        return next(rec.seq for rec in store.read(1, None, types=[ev.TaskFinished.TYPE])
                    if rec.event.task_id == FAILING and rec.event.exit_code != 0)


def seq_at(db: str, ts: float) -> int:
    """The last seq appended at or before ``ts`` (the log's clock)."""
    with open_store(db, create=False) as store:
        return max((rec.seq for rec in store.read(1, None) if rec.ts <= ts), default=0)


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


def open_page(browser, size: dict, url: str, errors: list[str]):
    page = browser.new_context(**size).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    return page


def wait_text(page, element_id: str, text: str) -> None:
    page.wait_for_function(
        f"() => document.getElementById({element_id!r})?.textContent.includes({text!r})",
        timeout=WAIT_MS)


def wait_position(page, seq: int, mode: str) -> None:
    page.wait_for_function(
        f"() => document.getElementById('mode').textContent === {mode!r}"
        f" && document.getElementById('position').textContent.startsWith('seq {seq} ')",
        timeout=WAIT_MS)


def shows_the_failing_task(page) -> None:
    """A task's page is open on the failing sim: its stderr, its block."""
    page.wait_for_function(
        f"() => document.getElementById('task-title')?.textContent === {FAILING!r}"
        f" && document.getElementById('task-page').textContent.includes({STDERR!r})",
        timeout=WAIT_MS)
    text = page.text_content("#task-page")
    assert "exit code 3" in text and "failed for good" in text
    assert "blocks (3)" in text and "depends on (1)" in text  # post-02, plot-2, report; prep
    assert page.evaluate(FITS)


def task_page_from_the_list(page, url: str) -> None:
    page.goto(url + "#/tasks")
    page.fill("#task-list input.search", "sim-01*")  # a glob
    page.click("#task-list .chip[data-state='failed']")
    page.wait_for_function(
        "() => { const rows = document.querySelectorAll('#task-list tbody a.task-link');"
        f" return rows.length === 1 && rows[0].textContent === {FAILING!r}; }}", timeout=WAIT_MS)
    assert page.evaluate(FITS)
    page.click(f"#task-list a.task-link:text-is('{FAILING}')")
    shows_the_failing_task(page)


def task_page_from_the_dag(page, url: str) -> None:
    page.goto(url + "#/")
    page.click("#dag-svg g.node[data-key='sim-#']")  # a group: its tasks open under the DAG
    wait_text(page, "group-title", "sim-# · 240 tasks")
    page.click("#group-list .chip[data-state='failed']")
    page.wait_for_function(
        "() => document.querySelectorAll('#group-list tbody a.task-link').length === 1",
        timeout=WAIT_MS)
    page.click(f"#group-list a.task-link:text-is('{FAILING}')")
    shows_the_failing_task(page)


def test_the_page_follows_a_local_run_on_a_desktop_and_a_phone(tmp_path: Path, browser) -> None:
    task_file, gate = gated_dag(tmp_path)
    db = f"sqlite:///{tmp_path}/ecloud.db"
    run = start_run(tmp_path, task_file, "--local", "3", "--slots", "2")
    web = None
    errors: list[str] = []
    try:
        wait_for_tasks(db)
        web = Web(tmp_path, db)
        desktop = open_page(browser, DESKTOP, web.url, errors)
        phone = open_page(browser, PHONE, web.url, errors)

        # 1. while the run holds at the gate: the sims are done, one failed
        wait_until_held(web)
        for page in (desktop, phone):
            page.wait_for_function(
                f"() => document.getElementById('count-succeeded')?.textContent === '{TOTAL - 60}'"
                " && document.getElementById('count-failed').textContent === '1'"
                " && Number(document.getElementById('count-running').textContent) > 0",
                timeout=WAIT_MS)
            page.wait_for_selector("#dag-svg g.node")
            wait_text(page, "final-failures", STDERR)  # failed for good, with its stderr
            assert page.evaluate(FITS)
            assert page.evaluate(OVERFLOWING_LABELS) == []
        held = desktop.evaluate(READ_PAGE)
        assert held["mode"] == "live"
        assert held["counts"] == counts_at(db, held["seq"])
        assert held["counts"]["blocked"] > 0  # the failed sim's post and what follows it
        final = desktop.text_content("#final-failures")
        assert FAILING in final and "blocks 3 tasks" in final and "post-02" in final
        assert desktop.text_content("#retrying").strip().endswith("none")  # no retries here
        assert "sim-#" in desktop.text_content("#dag")  # 300 tasks: grouped by name pattern
        desktop.wait_for_selector("#throughput-svg g.bar")
        desktop.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
        phone.screenshot(path=str(tmp_path / "status-page-phone.png"))

        # 2. the failing task's page, from the task list and from its DAG group
        for page in (desktop, phone):
            task_page_from_the_list(page, web.url)
            task_page_from_the_dag(page, web.url)
        # a narrower phone still fits: the task's page, the list, the overview
        phone.set_viewport_size({"width": 360, "height": 740})
        for where, ready in (("", "#task-page .attempt"), ("#/tasks", "#task-list tbody a"),
                             ("#/", "#dag-svg g.node")):
            if where:
                phone.goto(web.url + where)
            phone.wait_for_selector(ready, timeout=WAIT_MS)
            assert phone.evaluate(FITS), where or "the task's page"
        # and a running task's page follows it live
        running = web.json("/api/tasks?state=running&limit=1")["rows"][0]["id"]
        desktop.goto(web.url + f"#/task/{running}")
        desktop.wait_for_selector("#task-page .task-head .s-running", timeout=WAIT_MS)

        # 3. open the gate: the pages follow the run to its end
        gate.touch()
        desktop.wait_for_selector("#task-page .task-head .s-succeeded", timeout=WAIT_MS)
        assert "running" not in desktop.text_content("#task-page .attempt-head")
        desktop.goto(web.url + "#/")
        desktop.wait_for_function(
            "() => Number(document.getElementById('count-running').textContent) === 0"
            " && Number(document.getElementById('count-waiting').textContent) === 0"
            " && Number(document.getElementById('count-ready').textContent) === 0"
            " && Number(document.getElementById('count-dispatched').textContent) === 0",
            timeout=WAIT_MS)
        run.wait(120)
        assert run.returncode == 1, run.stderr.read()  # one task failed for good
        end_seq = web.json("/healthz")["head"]
        wait_position(desktop, end_seq, "live")  # the page catches up with the log's last events
        desktop.wait_for_function(  # and so does the DAG, within its refresh interval
            "() => document.querySelector('#dag g.node[data-key=\"post-#\"]')"
            "?.textContent.includes('47 succeeded')", timeout=WAIT_MS)
        end = desktop.evaluate(READ_PAGE)
        assert end["counts"] == counts_at(db, end["seq"])
        assert end["counts"]["succeeded"] > held["counts"]["succeeded"]

        # 4. the slider jumps to the failure, and finds none after it
        desktop.click("#prev-failure")
        failed_at = failure_seq(db)
        wait_position(desktop, failed_at, "history")
        assert desktop.evaluate(READ_PAGE)["counts"] == counts_at(db, failed_at)
        desktop.click("#next-failure")
        wait_text(desktop, "jump-note", "no failure after this moment")
        # to a time typed in (the held moment's, to the second)
        held_time = desktop.evaluate(
            f"() => fetch('/api/page?seq={held['seq']}').then((r) => r.json()).then((p) => p.clock)")
        typed = int(held_time)
        desktop.fill("#time-input", desktop.evaluate(f"() => utc({typed})"))
        desktop.click("#time-form button")
        wait_position(desktop, seq_at(db, typed), "history")
        # to the time of a click on the throughput chart (the middle of its first bar)
        x = desktop.evaluate("""() => {
            const t = liveData.throughput, width = document.getElementById("throughput-svg")
              .getBoundingClientRect().width;
            const bw = (width - CHART.left - CHART.right) / Math.max(t.succeeded.length, CHART.fewest);
            return CHART.left + (t.succeeded.findIndex((n) => n > 0) + 0.5) * bw; }""")
        with desktop.expect_request(lambda r: "/api/seek?time=" in r.url) as asked:
            desktop.click("#throughput-svg", position={"x": x, "y": 60})
        clicked = float(urllib.parse.parse_qs(urllib.parse.urlparse(asked.value.url).query)["time"][0])
        wait_position(desktop, seq_at(db, clicked), "history")

        # 5. the slider goes back to the held moment and shows its counts
        desktop.evaluate(f"""() => {{
            const slider = document.getElementById("slider");
            slider.value = {held['seq']};
            slider.dispatchEvent(new Event("input"));
        }}""")
        wait_position(desktop, held["seq"], "history")
        past = desktop.evaluate(READ_PAGE)
        assert past["seq"] == held["seq"]
        assert past["counts"] == held["counts"] == counts_at(db, held["seq"])
        # the DAG goes back too: the posts are running again, none succeeded
        desktop.wait_for_function(
            "() => { const n = document.querySelector('#dag g.node[data-key=\"post-#\"]');"
            " return n && n.textContent.includes('running')"
            " && !n.textContent.includes('succeeded'); }", timeout=WAIT_MS)
        desktop.mouse.move(0, 0)  # no bar of the chart lit up by the pointer
        desktop.screenshot(path=str(tmp_path / "status-page-history.png"), full_page=True)

        # 6. and back to live
        desktop.click("#live-button")
        desktop.wait_for_function("() => document.getElementById('mode').textContent === 'live'",
                                  timeout=WAIT_MS)
        assert desktop.evaluate(READ_PAGE)["counts"] == end["counts"]
        # long names are shortened to fit their node (drawn here: the sweep's names are short)
        long = "a-task-name-far-too-long-for-any-node-of-the-dag-0001"
        for mode, tasks in (("task", 1), ("pattern", 12)):
            drawn = desktop.evaluate("""([mode, name, tasks]) => {
                const counts = {waiting: 0, ready: 0, dispatched: 3, running: 4, succeeded: 2,
                                failed: 1, blocked: 1, cancelled: 1};
                drawGraph({mode, edges: [], nodes: [{key: name, label: name, level: 0, order: 0,
                           tasks, status: "running", counts}]});
                return document.getElementById("dag-svg").textContent; }""", [mode, long, tasks])
            assert "…" in drawn, mode
            assert desktop.evaluate(OVERFLOWING_LABELS) == [], mode
        assert not errors
        for name in ("status-page.png", "status-page-phone.png", "status-page-history.png"):
            shutil.copy(tmp_path / name, artifacts_dir() / name)
    finally:
        gate.touch()
        stop_run(run)
        if web is not None:
            web.stop()
