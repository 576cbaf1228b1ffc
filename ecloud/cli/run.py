"""``ecloud run FILE --local N``: a whole DAG on this machine, one command.

The embedded default: the SQLite log ``./ecloud.db`` (or ``--db``), an MQTT
broker of its own (Mosquitto when it is on PATH, else a pure-Python one, each
in its own process, on a free loopback port; or ``--broker`` / the config's
broker), a boss in this process and N local worker processes spawned through
the same VM effects OpenNebula will use. A live progress bar while it runs, a
summary at the end, exit status 1 if any task did not succeed. Running it
again on the same log continues where it stopped.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ecloud.boss.loop import Boss
from ecloud.cli import render
from ecloud.cli.boss import request_local_vms, start_web
from ecloud.cli.common import common_options, config_for, err, handle_errors, out
from ecloud.effects.local import LocalProvider
from ecloud.errors import EcloudError, UserError, ValidationError
from ecloud.events import types as ev
from ecloud.events.store import open_store
from ecloud.projections.state import LIVE, SUCCEEDED, State
from ecloud.rebuild import load_state
from ecloud.submit import submit_tasks

FINISHED = ("succeeded", "failed", "blocked", "cancelled")


def push_or_continue(store, file: Path) -> tuple[list[str], str]:
    """Push the file's tasks, or find them all already in the log (a run that
    is continued). Returns the task ids and what was done."""
    from ecloud.taskfile import parse_task_file, validate_against

    state = load_state(store)
    specs = parse_task_file(file)  # the file on its own first: every problem at once
    ids = [s.id for s in specs]
    present = [i for i in ids if i in state.tasks]
    if len(present) == len(ids):
        return ids, f"continuing: all {len(ids)} tasks of {file} are in the log already"
    if present:
        raise ValidationError(
            [f"task {i!r} is in the log already" for i in present[:10]]
            + ([f"... and {len(present) - 10} more"] if len(present) > 10 else [])
            + ["a run continues only when all of the file's tasks are in the log, or none is"],
            str(file),
        )
    validate_against(specs, state.tasks.__contains__, source=str(file))
    submit_tasks(store, specs, str(file),
                 validate=lambda cur: validate_against(specs, cur.tasks.__contains__, source=str(file)),
                 state=state)
    return ids, f"pushed {len(ids)} tasks from {file}"


def set_datastore(store, address: str) -> None:
    """A local datastore is given as an absolute path: workers run elsewhere."""
    from ecloud.submit import append_checked

    if "@" not in address and "://" not in address:
        folder = Path(address).expanduser().resolve()
        if not folder.is_dir():
            raise UserError(f"--datastore {address}: no such directory")
        address = str(folder)
    append_checked(store, lambda state: [] if state.context.get("datastore_address") == address
                   else [ev.ContextSet("datastore_address", address)])


def all_finished(view: dict) -> bool:
    """Every task in the log is finished (the boss works on all of them)."""
    counts = view.get("counts", {})
    return view.get("total", 0) > 0 and sum(counts.get(s, 0) for s in FINISHED) == view["total"]


def _summary(state: State, elapsed: float, ids: list[str]) -> Table:
    table = Table(title=f"Run summary ({len(ids)} tasks in {elapsed:.1f}s)", title_justify="left")
    table.add_column("state")
    table.add_column("tasks", justify="right")
    mine = [state.tasks[i] for i in ids]
    for status in FINISHED + ("waiting", "ready", "dispatched", "running"):
        n = sum(1 for t in mine if t.status == status)
        if n:
            table.add_row(f"[{render.STATUS_STYLE[status]}]{status}[/]", str(n))
    return table


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
              help="Where the workers run tasks (one directory per attempt) and keep their logs.")
@click.option("--datastore", metavar="ADDRESS",
              help="Set the datastore tasks stage their inputs from and results to: a local "
                   "directory (the embedded default) or user@host:/path. Default: the one the "
                   "log's context has (ecloud datastore set).")
@click.option("--web", "web_address", metavar="HOST:PORT",
              help="Serve the live status page there while the run lasts (see ecloud web). "
                   "Default: the setting web_address; none: no page.")
@click.option("--debug", is_flag=True, help="Workers log every step (see --work-dir/*.log).")
@common_options
@handle_errors
def run(file: Path, workers: int, slots: int, broker: str | None, work_dir: Path,
        datastore: str | None, web_address: str | None, debug: bool, db: str | None,
        config_path: str | None) -> None:
    """Run the tasks of FILE to the end on local worker processes."""
    from ecloud.effects.broker import start_broker

    config = config_for(db, config_path)
    started = time.monotonic()
    with open_store(config.db, create=True) as store:
        if datastore:
            set_datastore(store, datastore)
        ids, what = push_or_continue(store, file)
    err.print(what)
    with ExitStack() as stack:
        web = start_web(web_address or config.web_address, config.db)
        if web is not None:
            stack.callback(web.stop)
        broker_url = broker or config.broker
        if broker_url is None:
            embedded = start_broker()
            stack.callback(embedded.stop)
            broker_url = embedded.url
            err.print(f"embedded MQTT broker ({embedded.kind}) at {broker_url}")
        provider = LocalProvider(broker_url, config.cluster, slots=slots, work_root=work_dir,
                                 debug=debug)
        stack.callback(provider.close, stop_workers=True)  # a safety net: they were retired
        boss = Boss(config.db, broker_url, provider=provider, cluster=config.cluster,
                    snapshot_every=config.snapshot_every, resend_after=config.resend_after,
                    observe_every=1.0,
                    on_start=lambda state: request_local_vms(state, provider, workers,
                                                             "ecloud run --local"))
        thread = threading.Thread(target=_run_quietly, args=(boss,), name="boss", daemon=True)
        thread.start()
        while not boss.ready.wait(0.1):
            if boss.finished.is_set():
                raise EcloudError(f"the boss stopped while starting: {boss.error}")
        interrupted = _watch(boss, thread, len(ids))
        _retire_workers(boss, thread)
        boss.stop()
        thread.join(60)
        state = boss.state
    elapsed = time.monotonic() - started
    out.print(_summary(state, elapsed, ids))
    if boss.error is not None:  # the run ended because the boss did: say why
        raise EcloudError(f"the boss stopped: {boss.error!r} (run the same command again to "
                          "continue)")
    failed = [f for f in state.recent_failures if f.final and f.task_id in set(ids)]
    for f in failed[-10:]:
        out.print(f"  [red]failed[/] {f.task_id} (attempt {f.attempt}): {f.reason}"
                  f"  - see: ecloud log --task {f.task_id}")
    if interrupted:
        err.print("interrupted: run the same command again to continue")
        sys.exit(130)
    if any(state.tasks[i].status != SUCCEEDED for i in ids):
        sys.exit(1)


def _run_quietly(boss: Boss) -> None:
    """The boss thread: its error is reported by the main thread."""
    try:
        boss.run()
    except BaseException:  # noqa: BLE001 - kept in boss.error
        pass


def _watch(boss: Boss, thread: threading.Thread, total: int) -> bool:
    """Draw progress until every task is finished; True if interrupted."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total} done · {task.fields[running]} running · "
                   "[red]{task.fields[failed]} failed[/]"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
    )
    try:
        with bar:
            task = bar.add_task("tasks", total=total, running=0, failed=0)
            while not stop.is_set() and thread.is_alive():
                view = boss.view
                counts = view.get("counts", {})
                # the boss runs every task in the log, not only this file's
                # (a log reused from an earlier run): count against all of them
                bar.update(task, total=view.get("total") or total,
                           completed=sum(counts.get(s, 0) for s in FINISHED),
                           running=counts.get("running", 0) + counts.get("dispatched", 0),
                           failed=counts.get("failed", 0) + counts.get("blocked", 0))
                if all_finished(view):
                    return False
                stop.wait(0.2)
        return stop.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _retire_workers(boss: Boss, thread: threading.Thread, grace: float = 30.0) -> None:
    """Ask every live local VM to stop (workers drain and say goodbye) and
    wait, bounded, until none is live."""
    kills = [ev.VMKillRequested(vm_id, "ecloud run finished")
             for vm_id, status in boss.view.get("vms", [])
             if status not in ("gone", "failed", "killing")]
    if kills:
        boss.submit(kills)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and thread.is_alive():
        workers = boss.view.get("workers", {})
        if not any(status in LIVE for status, _ in workers.values()):
            return
        time.sleep(0.1)

