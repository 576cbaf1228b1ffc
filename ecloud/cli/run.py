"""``ecloud run FILE --local N``: a whole DAG on this machine, one command.

The embedded default: the SQLite log ``./ecloud.db`` (or ``--db``), an MQTT
broker of its own (Mosquitto when it is on PATH, else a pure-Python one, kept
by a keeper process in ``<work dir>/embedded-broker``; or ``--broker`` / the
config's broker), a boss in this process and N local worker processes
spawned through the same VM effects OpenNebula will use. A live progress bar
while it runs, a summary at the end; the exit statuses are
:mod:`ecloud.cli.exits`.

One boss per log: a run on a log that a live boss holds is refused at once
(exit 4), naming the holder, and touches nothing of it. A run that was killed
leaves its broker, its workers and their attempts running: the next run on
the same log and work directory reuses the broker, adopts the workers and
takes their reports of the attempts they hold - nothing is dispatched again
while its holder is alive. Left alone, the workers stop after
``local_boss_grace`` seconds (setting, 120) without a boss, and the keeper when no client
is left.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson
from attrs import define, field
from rich.markup import escape
from rich.table import Table

from ecloud.boss.lease import take
from ecloud.boss.loop import BEAT_EVERY, Boss
from ecloud.cli import exits, render
from ecloud.cli.boss import make_provider, request_local_vms, start_web
from ecloud.cli.common import (
    common_options,
    config_for,
    err,
    handle_errors,
    keep_going_on_broken_pipe,
    log_refusal,
    out,
    write_stdout,
)
from ecloud.cli.run_progress import RunDisplay
from ecloud.effects.providers.local import become_subreaper
from ecloud.errors import EcloudError, MissingLogError, UserError, ValidationError
from ecloud.events import types as ev
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store, redact
from ecloud.projections.state import BLOCKED, CANCELLED, FAILED, LIVE, SUCCEEDED, State
from ecloud.security.setup import BrokerSecurity, broker_security
from ecloud.views import task_list
from ecloud.views.progress import clock, status_counts, tally

if TYPE_CHECKING:
    from ecloud.cli.dagrun import DagRun

#: seconds "nothing can move" must hold before the run gives up (exit 3)
STUCK_FOR = 1.0

FINISHED = ("succeeded", "failed", "blocked", "cancelled")
#: failed and blocked tasks the summary names (each); past that it says how many more
SUMMARY_NAMES = 20


def check_file_against_log(config, file: Path, replace: bool,
                           max_running: int | None = None) -> tuple[list, DagRun | None]:
    """Parse FILE - a task file, or a DAGMan file (``.dag``) - every problem
    at once, and compare it with the log as it is: a changed task refuses the
    run before anything starts, unless ``replace``. Returns the specs (and
    for a DAG what its end needs). A bad file makes no log where there was
    none (it is recorded as refused in a log that exists)."""
    from ecloud.cli.dagrun import read_tasks
    from ecloud.taskfiles.submit import check_dispatch_sizes, diff_lines, plan_push

    try:
        store = open_store(config.db, create=False)
    except MissingLogError:
        store = None
    try:
        state = load_state(store) if store is not None else State()
        specs, dag = read_tasks(file, state, max_running)
        plan = plan_push(state, specs, file)
        check_dispatch_sizes(plan, state, file)
        if plan.changed and not replace:
            raise ValidationError(diff_lines(plan) + [
                f"{len(plan.changed)} task(s) of the file differ from the log: run with "
                "--replace to run them (and what depends on them) again with the new specs"],
                str(file))
    except UserError as exc:
        if store is not None:
            log_refusal(store, exc)  # recorded, as a refused push is
        raise
    finally:
        if store is not None:
            store.close()
    return specs, dag


def push_or_continue(store, file: Path, specs: list, replace: bool = False) -> tuple[list[str], str]:
    """Push the file's tasks (``specs``, already parsed): new ones are
    added, unchanged ones continue where they were, changed ones are
    replaced with ``replace`` (and refused without). Returns the task ids
    and what was done."""
    from ecloud.taskfiles.submit import push_file

    _, _, plan = push_file(store, specs, file, replace=replace)
    ids = [s.id for s in specs]
    if not plan.new and not plan.changed:
        return ids, f"continuing: all {len(ids)} tasks of {file} are in the log already"
    done = [f"pushed {len(plan.new)} new task(s)"] if plan.new else []
    if plan.same:
        done.append(f"{len(plan.same)} unchanged continue")
    if plan.changed:
        done.append(f"{len(plan.changed)} replaced (they and what depends on them run again)")
    return ids, f"{file}: " + ", ".join(done)


def set_datastore(store, address: str, key_file: str | None = None) -> tuple[str, str]:
    """:func:`mark_datastore`, then record it in the log. Returns (address, id)."""
    address, identity = mark_datastore(address, key_file)
    record_datastore(store, address, identity)
    return address, identity


def mark_datastore(address: str, key_file: str | None = None) -> tuple[str, str]:
    """Mark the datastore's root (``.ecloud-datastore``, made if missing;
    the root must exist and is never created) and return its (address, id).
    A local directory is given as an absolute path: workers run elsewhere."""
    from ecloud.effects.data.movers import StagingError, is_remote, mover_for

    if any(c.isspace() for c in address):
        raise UserError(f"datastore address {address!r} must not contain spaces")
    if not is_remote(address) and not address.startswith("file://"):
        folder = Path(address).expanduser().resolve()
        if not folder.is_dir():
            raise UserError(f"datastore {address}: no such directory (it is never created: make "
                            "it, or mount it, first)")
        address = str(folder)
    try:
        with mover_for(address, key_file=key_file) as mover:
            return address, mover.mark()
    except StagingError as exc:
        kind = EcloudError if exc.kind == "unreachable" else UserError
        raise kind(f"datastore {address}: {exc.reason}") from None


def record_datastore(store, address: str, identity: str) -> None:
    """The datastore's address and id into the context, in one batch."""
    from ecloud.taskfiles.submit import append_checked

    wanted = {"datastore_address": address, "datastore_id": identity}
    append_checked(store, lambda state: [
        ev.ContextSet(k, v) for k, v in wanted.items() if state.context.get(k) != v])


def all_finished(view: dict) -> bool:
    """Every task in the log is finished (the boss works on all of them)."""
    counts = view.get("counts", {})
    return view.get("total", 0) > 0 and sum(counts.get(s, 0) for s in FINISHED) == view["total"]


def _summary(state: State, elapsed: float, ids: list[str]) -> Table:
    table = Table(title=f"Run summary ({len(ids)} tasks in {clock(elapsed)})",
                  title_justify="left")
    table.add_column("state")
    table.add_column("tasks", justify="right")
    counts = status_counts(state, ids)
    for status in FINISHED + ("waiting", "ready", "dispatched", "running"):
        if counts.get(status):
            table.add_row(f"[{render.STATUS_STYLE[status]}]{status}[/]", str(counts[status]))
    return table


def _print_failures(state: State, ids: list[str]) -> None:
    """Every failed, blocked and cancelled task of the run, up to
    :data:`SUMMARY_NAMES` of each, with the command that shows its output;
    past that, how many more and the command that lists them all."""
    for status in (FAILED, BLOCKED, CANCELLED):
        tasks = task_list.select(state, states=(status,), among=ids)
        for task in tasks[:SUMMARY_NAMES]:
            tid = escape(task.spec.id)
            if status == FAILED:
                out.print(f"  [red]failed[/] {tid} (attempt {task.attempt}): "
                          f"{escape(task.reason or '-')} - output: ecloud logs {tid}")
            elif status == BLOCKED:
                out.print(f"  [yellow]blocked[/] {tid}: behind {escape(task.blocked_by or '?')}")
            else:
                out.print(f"  [magenta]cancelled[/] {tid}: {escape(task.reason or '-')}")
        if len(tasks) > SUMMARY_NAMES:
            out.print(f"  ... and {len(tasks) - SUMMARY_NAMES} more {status}: "
                      f"ecloud tasks --state {status}")


def _print_workflow(state: State, ids: list[str], file: Path) -> None:
    """The workflow's result, when FILE is one: what decided it."""
    result = _workflow(state, ids, file)
    if result is None or result.status == "running":  # (interrupted, unschedulable: said above)
        return
    line = f"workflow {result.status}"
    why = []
    if result.aborted_by is not None:
        why.append(f"aborted by {result.aborted_by} (abort_on)")
    if result.final is not None:
        why.append(f"its final task {result.final} decided")
    if why:
        line += ": " + ", then ".join(why)
    out.print(escape(f"{line}; exit status {result.exit}"))


def _summary_data(state: State, elapsed: float, ids: list[str], status: int,
                  db: str, outcome: Outcome, file: Path | None = None) -> dict:
    """``ecloud run --json``: the run's outcome for a program (the log's URL
    without its password)."""
    rows = [task_list.row(state, t)
            for t in task_list.select(state, states=(FAILED, BLOCKED, CANCELLED), among=ids)]
    return {"log": db, "tasks": len(ids), "elapsed": round(elapsed, 3),
            "counts": status_counts(state, ids), "exit_status": status,
            "interrupted": outcome.interrupted,
            "failed": [r for r in rows if r["state"] == FAILED],
            "blocked": [r for r in rows if r["state"] == BLOCKED],
            "cancelled": [r for r in rows if r["state"] == CANCELLED],
            "unschedulable": [{"task": t, "reason": why} for t, why in outcome.stuck.items()],
            "workers_failed": [{"vm": vm, "reason": why} for vm, why in outcome.workers_failed],
            "workflow": _workflow_data(state, ids, file)}


def _workflow_data(state: State, ids: list[str], file: Path | None) -> dict | None:
    result = _workflow(state, ids, file) if file is not None else None
    if result is None:
        return None
    return {"status": result.status, "exit": result.exit, "final": result.final,
            "aborted_by": result.aborted_by, "failed": result.failed,
            "dag_status": result.dag_status}


@click.command("run")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--local", "workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="How many local worker processes to start.")
@click.option("--slots", type=click.IntRange(min=1), default=1, show_default=True,
              help="Task slots per worker.")
@click.option("--broker", metavar="URL", help="Use this MQTT broker (mqtt://host:port) instead of "
              "starting one. Default: the config's broker, else an embedded one.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".ecloud-workers"), show_default=True,
              help="Where the workers run tasks (one directory per attempt) and keep their logs, "
                   "and where the embedded broker lives.")
@click.option("--datastore", metavar="ADDRESS",
              help="Set the datastore tasks stage their inputs from and results to: a local "
                   "directory (the embedded default) or user@host:/path. Default: the one the "
                   "log's context has (ecloud datastore set).")
@click.option("--web", "web_address", metavar="HOST:PORT",
              help="Serve the live status page there while the run lasts (see ecloud web). "
                   "Default: the setting web_address; none: no page.")
@click.option("--replace", is_flag=True,
              help="FILE was edited: tasks whose spec changed run again with the new one (and "
                   "every task downstream of them); without it a changed task refuses the run "
                   "and shows the differences (see ecloud push --replace).")
@click.option("--debug", is_flag=True, help="Workers log every step (see --work-dir/*.log).")
@click.option("--maxjobs", "max_running", type=click.IntRange(min=0), metavar="N",
              help="At most N tasks of FILE dispatched or running at once (DAGMan's "
                   "-maxjobs; 0: no limit; a task file's workflow.max_running, overridden).")
@click.option("--json", "as_json", is_flag=True,
              help="At the end, print the run's outcome as one JSON object on stdout (counts, "
                   "every failed and blocked task, the exit status) instead of the summary; "
                   "progress still goes to stderr.")
@common_options
@handle_errors
def run(file: Path, workers: int, slots: int, broker: str | None, work_dir: Path,
        datastore: str | None, web_address: str | None, replace: bool, debug: bool,
        as_json: bool, max_running: int | None, db: str | None, config_path: str | None) -> None:
    """Run the tasks of FILE to the end on local worker processes.

    FILE is a task file (JSON), or an HTCondor DAGMan file (x.dag: its
    submit files, scripts, retries, final node...; see "Coming from
    HTCondor DAGMan" in the README). A DAG that fails writes its rescue
    file (x.dag.rescue001, ...), which a run in a fresh log starts from.

    Run it again to continue where it stopped - after Ctrl-C, or after the
    run was killed: its workers, and the attempts they hold, are taken over.
    One boss per log: while another run (or ecloud-boss) holds the log this
    one is refused (exit 4); add tasks to that run with ecloud push.
    """
    from ecloud.effects.messaging.embedded import open_embedded

    keep_going_on_broken_pipe()  # a reader of its output that goes away stops no run
    config = config_for(db, config_path)
    started = time.monotonic()
    # the file and its differences with the log first: every problem at once,
    # before anything starts
    max_running = max_running or None  # 0: no limit, as DAGMan's -maxjobs 0
    specs, dag = check_file_against_log(config, file, replace, max_running)
    # the runs of a DAG's SUBDAG EXTERNAL nodes take as many workers and slots
    # (taskfiles/dagman/convert.py: their command reads these)
    os.environ["ECLOUD_RUN_LOCAL"], os.environ["ECLOUD_RUN_SLOTS"] = str(workers), str(slots)
    if dag is not None:
        dag.say(err)
    marked = mark_datastore(datastore) if datastore else None  # recorded once the log is ours
    work_dir = work_dir.resolve()
    broker_url = broker or config.broker
    boss_id = uuid.uuid4().hex[:12]
    # The log first: a live boss holds it, and this run stops here, having
    # touched nothing of that boss's - not its broker, not its workers.
    lease, boss_store = take(config.db, boss_id, config.takeover_after, "ecloud run")
    with ExitStack() as stack:
        if not isinstance(boss_store, str):  # MariaDB: the lock lives on its connection
            stack.callback(boss_store.close)
        stack.callback(lease.release)  # the last thing this run lets go of
        log_id = _log_id(config.db)
        security = broker_security(config, broker_url) if broker_url else BrokerSecurity()
        embedded = None
        if broker_url is None:
            embedded = open_embedded(work_dir / "embedded-broker", log_id)
            broker_url = embedded.url
            err.print(f"embedded MQTT broker ({embedded.kind}) at {broker_url}"
                      + (f" - the one a killed run of this log left, in {embedded.folder}"
                         if embedded.reused else ""), markup=False)
            stack.callback(embedded.stop)
        become_subreaper()  # what a worker killed outright leaves behind comes to us
        web = start_web(web_address or config.web_address, config.db, config.web_hosts)
        if web is not None:
            stack.callback(web.stop)
        provider = make_provider("local", config, broker_url, slots, security, work_root=work_dir,
                                 debug=debug, boss_grace=config.local_boss_grace, log_id=log_id)
        stack.callback(provider.close, stop_workers=True)  # a safety net: they were retired

        def on_start(state: State) -> list:
            adopted = provider.adopt()  # the lease is ours now: the workers are too
            if adopted:
                err.print(f"took over {len(adopted)} worker(s) of an earlier run: "
                          f"{', '.join(adopted)}", markup=False)
            return []

        def keep_local(state: State) -> list:
            counts = state.counts
            if not any(counts[s] for s in ("waiting", "ready", "dispatched", "running")):
                return []  # nothing left to run (a file run again): no worker to start
            return request_local_vms(state, provider, workers, "ecloud run --local")

        boss = Boss(boss_store, broker_url, provider=provider, cluster=config.cluster,
                    snapshot_every=config.snapshot_every, resend_after=config.resend_after,
                    observe_every=1.0, on_start=on_start, label="ecloud run", boss_id=boss_id,
                    connect_wait=10.0, auth=security.auth, accounts=security.accounts,
                    upkeep=keep_local, lease=lease,
                    # four beats within the workers' grace: one lost or late is no loss
                    beat_every=min(BEAT_EVERY, config.local_boss_grace / 4))
        thread = threading.Thread(target=_run_quietly, args=(boss,), name="boss", daemon=True)
        thread.start()
        while not boss.ready.wait(0.1):
            if boss.finished.is_set():
                if isinstance(boss.error, EcloudError):
                    raise boss.error
                raise EcloudError(f"the boss stopped while starting: {boss.error}")
        stack.callback(_stop_boss, boss, thread)
        with open_store(config.db, create=True) as store:
            if marked is not None:
                record_datastore(store, *marked)
            ids, what = push_or_continue(store, file, specs, replace)
            pushed = store.head()
        boss.watch(ids)
        err.print(what, markup=False)
        with RunDisplay(err, len(ids)) as display:
            outcome = _watch(boss, thread, display, pushed,
                             lambda: _keep_broker(embedded, log_id) if embedded else None)
            boss.upkeep = None  # the workers go now: none is replaced
            _retire_workers(boss, thread)
            _stop_boss(boss, thread)
            state = boss.state
            # the last word from the state the boss ended with (the view's
            # counts of the run's tasks may be a turn behind)
            display.finish(tally(status_counts(state, ids), len(ids)))
        elapsed = time.monotonic() - started
        if boss.error is not None:  # the run ended because the boss did: say why
            if not as_json:
                out.print(_summary(state, elapsed, ids))
            raise EcloudError(f"the boss stopped: {boss.error!r} (run the same command again "
                              "to continue)")
        status = _exit_status(state, ids, outcome, file)
        if dag is not None and status != exits.OK and not outcome.interrupted:
            from ecloud.cli.dagrun import write_rescue_file

            rescue = write_rescue_file(dag, state, ids)
            if rescue is not None:
                err.print(f"wrote the rescue file {rescue}", markup=False)
        if as_json:
            write_stdout(orjson.dumps(_summary_data(state, elapsed, ids, status, redact(config.db),
                                                    outcome, file)).decode() + "\n")
        else:
            out.print(_summary(state, elapsed, ids))
            _print_failures(state, ids)
            _print_workflow(state, ids, file)
        if web is not None and not outcome.interrupted:
            _hold_page(web)
    if outcome.interrupted:
        err.print("interrupted: run the same command again to continue")
        sys.exit(exits.INTERRUPTED)
    if outcome.workers_failed:
        raise EcloudError("no local worker is left to run the tasks: "
                          + "; ".join(f"{name}: {why}" for name, why in outcome.workers_failed))
    if outcome.stuck:
        for task_id, why in list(outcome.stuck.items())[:10]:
            err.print(f"[bold red]unschedulable:[/] {escape(task_id)} {escape(why)}")
        if len(outcome.stuck) > 10:
            err.print(f"... and {len(outcome.stuck) - 10} more (ecloud status)")
        err.print("nothing else can run (see: ecloud why TASK); run again with workers that "
                  "offer enough slots (--slots N), or change the task")
        sys.exit(exits.UNSCHEDULABLE)
    sys.exit(status)


def _exit_status(state: State, ids: list[str], outcome: Outcome, file: Path) -> int:
    """The run's exit status (the table of :mod:`ecloud.cli.exits`). A
    workflow with a final task or an abort rule ends as its result says:
    the final task's result, or the abort's ``return``."""
    if outcome.interrupted:
        return exits.INTERRUPTED
    if outcome.workers_failed:
        return exits.FAILED
    if outcome.stuck:
        return exits.UNSCHEDULABLE
    result = _workflow(state, ids, file)
    if result is not None:
        if result.status == "aborted" and result.exit is not None:
            return result.exit
        return exits.OK if result.status == "succeeded" else exits.FAILED
    if any(state.tasks[i].status != SUCCEEDED for i in ids):
        return exits.FAILED
    return exits.OK


def _workflow(state: State, ids: list[str], file: Path):
    """The result of FILE's workflow, if it is one (a final task, an abort
    rule, limits: :mod:`ecloud.projections.workflows`), else None."""
    from ecloud.projections.workflow_result import workflow_result
    from ecloud.taskfiles.submit import source_of

    source = source_of(file)
    if source not in state.workflows:
        return None
    return workflow_result(state, source, ids)


def _hold_page(web) -> None:
    """The run is over but its page was asked for: a person at a terminal
    keeps it until Ctrl-C (a run of seconds would close it before it could
    be seen; ecloud web shows any log later). Elsewhere (a script, CI) the
    run ends at once, as without --web."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return
    err.print(f"the run is over; its page stays at {web.url} until Ctrl-C", markup=False)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _log_id(url: str) -> str:
    """The log's own id (it ties this log's broker and workers to it)."""
    with open_store(url, create=False) as store:
        return store.log_id()


def _keep_broker(embedded, log_id: str) -> None:
    """The embedded broker's keeper died (killed): start a new one on the
    same port; the boss and the workers reconnect to it by themselves."""
    if embedded.alive():
        return
    if embedded.revive(log_id):
        err.print(f"the embedded broker stopped: started it again at {embedded.url}")
    else:
        raise EcloudError(f"the embedded broker stopped and its port {embedded.port} was taken "
                          "meanwhile: run the same command again to continue")


def _run_quietly(boss: Boss) -> None:
    """The boss thread: its error is reported by the main thread."""
    try:
        boss.run()
    except BaseException:  # noqa: BLE001 - kept in boss.error
        pass


def _stop_boss(boss: Boss, thread: threading.Thread) -> None:
    boss.stop()
    thread.join(60)


@define
class Outcome:
    """How the watch ended."""

    interrupted: bool = False
    #: unschedulable tasks, when nothing else could move
    stuck: dict[str, str] = field(factory=dict)
    #: (VM, why) of local workers that failed, when none is left
    workers_failed: list[tuple[str, str]] = field(factory=list)


def _watch(boss: Boss, thread: threading.Thread, display: RunDisplay, pushed: int,
           upkeep: Callable[[], None] = lambda: None) -> Outcome:
    """Draw progress until every task is finished, nothing can move any
    more, or the run is interrupted; ``upkeep`` runs on every look."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stuck_since: float | None = None
    try:
        # the bar counts this run's tasks; the boss runs every task in the
        # log (a log reused from an earlier run), and the run waits for them
        # all: the display says how many of the others are unfinished
        while not stop.is_set() and thread.is_alive():
            view = boss.view
            display.show(view)
            current = view.get("seq", 0) >= pushed
            if current and all_finished(view):
                return Outcome()
            if current and view.get("stuck"):
                now = time.monotonic()
                stuck_since = stuck_since if stuck_since is not None else now
                if now - stuck_since >= STUCK_FOR:
                    failed = view.get("vm_failures", [])
                    if failed and not _serving(view):
                        return Outcome(workers_failed=failed)
                    return Outcome(stuck=dict(view["stuck"]))
            else:
                stuck_since = None
            upkeep()
            stop.wait(0.2)
        if stop.is_set():
            err.print("interrupted: stopping the workers (what they run now is stopped, and runs "
                      "again when the run is continued)...", markup=False)
        return Outcome(interrupted=stop.is_set())
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _serving(view: dict) -> bool:
    """Whether any worker is live (and so might run something)."""
    return any(status in LIVE for status, _ in view.get("workers", {}).values())


def _retire_workers(boss: Boss, thread: threading.Thread, grace: float = 30.0) -> None:
    """Ask every local VM to stop (workers drain and say goodbye) and wait,
    bounded, until none is live and none is on its way: a VM requested just
    before the end is killed too once it has an id, so that the log never
    keeps a VM of a finished run as booting."""
    asked: set[int] = set()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and thread.is_alive():
        view = boss.view
        vms = view.get("vms", [])
        kills = [ev.VMKillRequested(vm_id, "ecloud run finished") for vm_id, status in vms
                 if status not in ("gone", "failed", "killing") and vm_id not in asked]
        if kills:
            boss.submit(kills)
            asked.update(k.vm_id for k in kills)
        workers = view.get("workers", {})
        if (not any(status in LIVE for status, _ in workers.values())
                and not view.get("vms_unallocated")
                and all(status in ("gone", "failed") for _, status in vms)):
            return
        time.sleep(0.1)
