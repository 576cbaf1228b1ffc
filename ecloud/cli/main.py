"""``ecloud``: the operator's command line.

Every command reads the event log named by ``--db`` (or ``$ECLOUD_DB``, or
the config file), and the ones that change anything do it by appending an
event - after checking it against the current state, so a bad command is
refused with a reason and leaves the log as it was.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ecloud.cli.common import (
    common_options,
    err,
    handle_errors,
    log_store,
    operator_log,
    out,
    progress_bar,
)
from ecloud.cli.lazy import LazyGroup
from ecloud.errors import MissingLogError, UserError, ValidationError

if TYPE_CHECKING:
    from ecloud.events.types import Recorded

# Every command imports what it uses when it runs (see ecloud/cli/lazy.py):
# `ecloud --help` and a command that fails early import click and little else.


def _a_number(param: click.Parameter, value: float | None) -> float | None:
    """A float option's value, NaN refused (it passes every range check)."""
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number", param=param)
    return value


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ecloud")
def cli() -> None:
    """Distribute shell-command tasks with dependencies over many machines.

    Everything that happens is an event in one append-only log; these
    commands push work, inspect progress and history, and steer the cluster.
    """


# ------------------------------------------------------------------------ push


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate only, and say what a push would do; "
              "write nothing.")
@click.option("--replace", is_flag=True,
              help="Tasks of FILE already in the log whose spec changed take the new spec and "
                   "run again (with every task downstream of them); unfinished tasks the file "
                   "pushed before and no longer has are cancelled. Without it a changed task "
                   "refuses the push and shows the differences.")
@common_options
@handle_errors
def push(file: Path, dry_run: bool, replace: bool, db: str | None,
         config_path: str | None) -> None:
    """Validate a task file (or a DAGMan .dag file) and add its tasks to the log (the seed's push-tasks).

    Every problem in the file is reported at once, with its location; then
    nothing is written and the exit status is 2. Tasks may depend on tasks
    pushed earlier. A file pushed again adds its new tasks and leaves the
    unchanged ones alone; a changed task is an error unless --replace.
    """
    from ecloud.log.rebuild import load_state
    from ecloud.projections.state import State
    from ecloud.taskfiles.submit import check_dispatch_sizes, diff_lines, plan_push, push_file

    if dry_run:
        try:
            with log_store(db, config_path, create=False) as store:
                state = load_state(store)
            against = f"against the log at seq {state.seq}"
        except MissingLogError:
            state, against = State(), "(no log yet)"
        specs = _read_tasks(file, state)
        plan = plan_push(state, specs, file)
        check_dispatch_sizes(plan, state, file)
        out.print(f"{escape(str(file))}: {len(specs)} task(s) valid {against}: "
                  f"{escape(_plan_text(plan, replace, dry=True))}; "
                  "dry run: nothing written")
        for line in diff_lines(plan):
            out.print(f"  {escape(line)}")
        if plan.changed and not replace:  # as the push itself would be: refused
            raise ValidationError([f"{len(plan.changed)} task(s) of the file differ from the "
                                   "log: the push would be refused; push with --replace to run "
                                   "them (and what depends on them) again with the new specs"],
                                  str(file))
        return
    with operator_log(db, config_path, create=True) as store:
        with progress_bar("reading the log") as progress:
            state = load_state(store, progress=progress)
        specs = _read_tasks(file, state)
        state, seqs, plan = push_file(store, specs, file, replace=replace, state=state)
    where = (f" (seq {seqs[0]}" + (f"-{seqs[-1]})" if len(seqs) > 1 else ")")) if seqs else ""
    out.print(f"{escape(str(file))}: {escape(_plan_text(plan, replace))}{where}")
    if plan.removed and not replace:
        out.print(f"  no longer in the file: {escape(', '.join(t for t, _ in plan.removed[:10]))}"
                  + (" ..." if len(plan.removed) > 10 else "")
                  + " (push with --replace to cancel the unfinished ones)")


def _read_tasks(file: Path, state) -> list:
    """A task file's tasks, or a DAGMan file's (its report on stderr)."""
    from ecloud.cli.dagrun import read_tasks

    specs, dag = read_tasks(file, state)
    if dag is not None:
        dag.say(err)
    return specs


def _plan_text(plan, replace: bool = False, dry: bool = False) -> str:
    """What a push did (or, ``dry``, would do)."""
    pushed, replaced, cancelled = (("would add", "would be replaced", "would be cancelled")
                                   if dry else ("pushed", "replaced", "cancelled"))
    parts = [f"{pushed} {len(plan.new)} new task(s)" if plan.new else "no new task"]
    if plan.same:
        parts.append(f"{len(plan.same)} unchanged")
    if plan.changed:
        parts.append(f"{len(plan.changed)} {replaced}, to run again with what depends on them"
                     if replace else f"{len(plan.changed)} changed")
    unfinished = [t for t, done in plan.removed if not done]
    if plan.removed:
        parts.append(f"{len(plan.removed)} no longer in the file"
                     + (f" ({len(unfinished)} unfinished {cancelled})" if replace and unfinished
                        else ""))
    return ", ".join(parts)


# ---------------------------------------------------------------------- status


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--cost", is_flag=True,
              help="The cost ledger instead: worker-seconds per task and in total, VM-seconds "
                   "(booting, busy, idle) and bytes staged, derived from the whole log.")
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True,
              help="With --cost: how many of the costliest tasks to list (--json lists all).")
@click.option("--watch", "watch_every", type=click.FloatRange(min=0.2, max=3600),
              callback=lambda ctx, param, value: _a_number(param, value), is_flag=False,
              flag_value=2.0, default=None, metavar="[SECONDS]",
              help="Keep showing the status as the log moves on, every SECONDS (default 2), "
                   "until Ctrl-C; on a terminal the view is redrawn in place, elsewhere a line "
                   "of counts is printed whenever they change.")
@common_options
@handle_errors
def status(as_json: bool, cost: bool, top: int, watch_every: float | None, db: str | None,
           config_path: str | None) -> None:
    """Counts per task state, the workers, the failed tasks and the recent
    retried attempts (ecloud tasks lists every task)."""
    import orjson

    from ecloud.cli import render
    from ecloud.log.rebuild import load_state

    if cost:
        return _cost(as_json, top, db, config_path)
    if watch_every is not None:
        if as_json:
            raise UserError("--watch draws the status for people; --json prints it once")
        from ecloud.cli.watch import watch_status

        return watch_status(db, config_path, watch_every)
    with (
        log_store(db, config_path, create=False) as store,
        progress_bar("reading the log", enabled=not as_json) as progress,
    ):
        state = load_state(store, progress=progress)
    if as_json:
        sys.stdout.write(orjson.dumps(render.status_data(state)).decode() + "\n")
    else:
        render.render_status(state, out, title=store.url, now=time.time())


@cli.command()
@click.argument("task_id", metavar="TASK|VM")
@click.option("--until", type=click.IntRange(min=0), metavar="SEQ",
              help="Explain the state at this seq of the log (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common_options
@handle_errors
def why(task_id: str, until: int | None, as_json: bool, db: str | None,
        config_path: str | None) -> None:
    """Why TASK is in its state: the dependency it waits for, the worker that
    has it, the timeout or backoff that applies, the failed task that blocks
    it, or why no worker can run it (unschedulable). The same as
    ``ecloud-replay --why``.

    Given a VM's name or id instead (no task has it), why the boss keeps or
    kills that VM, and its story: who asked for it, what the cloud answered,
    what OpenNebula's state hook told beside what the polls saw (and which
    told first), who killed it."""
    from ecloud.cli.replay import show_why

    with log_store(db, config_path, create=False) as store:
        show_why(store, task_id, until, as_json)


def _cost(as_json: bool, top: int, db: str | None, config_path: str | None) -> None:
    import orjson

    from ecloud.cli import render
    from ecloud.views.cost import ledger_of

    with log_store(db, config_path, create=False) as store:
        head = store.head()
        with progress_bar("reading the log", enabled=not as_json) as progress:
            ledger, _ = ledger_of(store.read(1, head), lambda seq: progress(seq, head))
    data = ledger.data()
    if as_json:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        render.render_cost(data, out, top)


# ------------------------------------------------------------------------- log


def _wanted(rec: Recorded, task: str | None, worker: str | None) -> bool:
    from ecloud.events import types as ev

    event = rec.event
    if task is not None:
        if isinstance(event, ev.TasksSubmitted):
            if not any(t.id == task for t in event.tasks):
                return False
        elif getattr(event, "task_id", None) != task:
            return False
    return not (worker is not None and getattr(event, "worker_id", None) != worker)


def _print_record(rec: Recorded, as_json: bool) -> None:
    import orjson

    from ecloud.cli import render
    from ecloud.events.codec import converter

    if as_json:
        line = {"seq": rec.seq, "ts": rec.ts, "type": rec.event.TYPE,
                "version": rec.event.VERSION, "body": converter.unstructure(rec.event)}
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
    else:
        out.print(f"{rec.seq:>8}  {render.when(rec.ts)}  {rec.event.TYPE:<20} "
                  f"{render.summarise(rec.event)}", markup=False)


@cli.command("log")
@click.option("--from", "start", type=click.IntRange(min=1), default=1, show_default=True,
              help="First seq to show.")
@click.option("--to", "end", type=click.IntRange(min=1), help="Last seq to show (default: head).")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only events of this type, e.g. task.finished (repeatable).")
@click.option("--task", metavar="ID", help="Only events about this task.")
@click.option("--worker", metavar="ID", help="Only events about this worker.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they are appended.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@common_options
@handle_errors
def log_command(start: int, end: int | None, types: tuple[str, ...], task: str | None,
                worker: str | None, follow: bool, as_json: bool, db: str | None,
                config_path: str | None) -> None:
    """Show events from the log, oldest first."""
    from ecloud.events import types as ev

    unknown = sorted(set(types) - set(ev.EVENT_TYPES))
    if unknown:
        raise UserError(f"unknown event type(s) {', '.join(unknown)}; known: "
                        + ", ".join(sorted(ev.EVENT_TYPES)))
    if follow and end is not None:
        raise UserError("--follow and --to cannot be used together")
    with log_store(db, config_path, create=False) as store:
        upto = end if end is not None else store.head()
        for rec in store.read(start, upto, types=types or None):
            if _wanted(rec, task, worker):
                _print_record(rec, as_json)
        if follow:
            sys.stdout.flush()
            try:
                for rec in store.follow(max(upto, start - 1)):
                    if (not types or rec.event.TYPE in types) and _wanted(rec, task, worker):
                        _print_record(rec, as_json)
                        sys.stdout.flush()
            except KeyboardInterrupt:
                return  # the way a follow ends: exit 0


# ----------------------------------------------------------------- cancel/retry


@cli.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="TASK...")
@click.option("--reason", default="", help="Why (kept in the log).")
@common_options
@handle_errors
def cancel(task_ids: tuple[str, ...], reason: str, db: str | None, config_path: str | None) -> None:
    """Cancel tasks: they will not run (a running attempt is killed) and their
    descendants are blocked until the task is retried."""
    from ecloud.events import types as ev
    from ecloud.projections import tasks as task_rules
    from ecloud.taskfiles.submit import append_checked

    with operator_log(db, config_path, create=False) as store:
        def build(state):
            problems = [p for t in task_ids if (p := task_rules.cancel_problem(state, t))]
            if problems:
                raise UserError("; ".join(problems))
            return [ev.TaskCancelled(t, reason) for t in task_ids]

        append_checked(store, build)
    out.print(f"cancelled {len(task_ids)} task(s)")


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--failed", "all_failed", is_flag=True, help="Retry every task that failed for good.")
@common_options
@handle_errors
def retry(task_ids: tuple[str, ...], all_failed: bool, db: str | None, config_path: str | None) -> None:
    """Run failed or cancelled tasks again (with their full retry budget);
    the tasks they blocked become eligible again."""
    from ecloud.events import types as ev
    from ecloud.projections import tasks as task_rules
    from ecloud.projections.state import FAILED
    from ecloud.taskfiles.submit import append_checked

    if bool(task_ids) == all_failed:
        raise UserError("give task ids or --failed (one of the two)")
    chosen: list[str] = []
    with operator_log(db, config_path, create=False) as store:
        def build(state):
            chosen[:] = list(task_ids) or [t for t, r in state.tasks.items() if r.status == FAILED]
            problems = [p for t in chosen if (p := task_rules.retry_problem(state, t))]
            if problems:
                raise UserError("; ".join(problems))
            return [ev.RetryRequested(t) for t in chosen]

        append_checked(store, build)
    out.print(f"retrying {len(chosen)} task(s)" if chosen else "no failed tasks to retry")


# --------------------------------------------------------------------- context


@cli.group("context")
def context_group() -> None:
    """Show or change the cluster context (boss and datastore addresses,
    heartbeat timeout, ...): the seed's show_context / drop_context."""


@context_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@handle_errors
def context_show(as_json: bool, db: str | None, config_path: str | None) -> None:
    """Every context key with its value (or default) and meaning."""
    import orjson

    from ecloud.cli import render
    from ecloud.log.rebuild import load_state
    from ecloud.projections import context as ctx

    with log_store(db, config_path, create=False) as store:
        state = load_state(store)
    if as_json:
        values = {k: ctx.get(state, k) for k in sorted(ctx.KEYS)}  # numbers as numbers
        sys.stdout.write(orjson.dumps(values).decode() + "\n")
    else:
        render.render_context(state, out)


def _set_context(store, key: str, value: str) -> None:
    from ecloud.events import types as ev
    from ecloud.projections import context as ctx
    from ecloud.taskfiles.submit import append_checked

    if key in ("datastore_address", "datastore_id"):
        raise UserError(f"{key} is set with the datastore's mark: ecloud datastore set ADDRESS")
    problem = ctx.check(key, value)
    if problem:
        raise UserError(problem)
    append_checked(store, lambda state: [ev.ContextSet(key, value)])


# a VALUE may start with '-' (`queue_ahead -3` is refused for what it is, not
# taken for an unknown option)
@context_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@common_options
@handle_errors
def context_set(key: str, value: str, db: str | None, config_path: str | None) -> None:
    """Set one context KEY to VALUE (see `ecloud context show` for the keys)."""
    with operator_log(db, config_path, create=True) as store:
        _set_context(store, key, value)
    out.print(f"{escape(key)} = {escape(value)}")


@context_group.command("drop")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@common_options
@handle_errors
def context_drop(keys: tuple[str, ...], db: str | None, config_path: str | None) -> None:
    """Remove context values (all of them when no KEY is given), e.g. so the
    boss sets its own address afresh, as in the seed."""
    from ecloud.events import types as ev
    from ecloud.projections import context as ctx
    from ecloud.taskfiles.submit import append_checked

    unknown = sorted(set(keys) - set(ctx.KEYS))
    if unknown:
        raise UserError(f"unknown context key(s) {', '.join(unknown)}; known: {', '.join(sorted(ctx.KEYS))}")
    dropped: list[str] = []
    with operator_log(db, config_path, create=False) as store:
        def build(state):
            dropped[:] = [k for k in (keys or sorted(state.context)) if k in state.context]
            return [ev.ContextDropped(k) for k in dropped]

        append_checked(store, build)
    out.print(f"dropped {escape(', '.join(dropped))}" if dropped else "nothing to drop")


# ------------------------------------------------------------------- datastore


@cli.group("datastore")
def datastore_group() -> None:
    """The datastore workers pull inputs from and push results to."""


@datastore_group.command("set")
@click.argument("address")
@click.option("--key", "key_file", metavar="PATH", envvar="ECLOUD_DATASTORE_KEY",
              help="SSH private key for an ssh datastore. Default: $ECLOUD_DATASTORE_KEY.")
@common_options
@handle_errors
def datastore_set(address: str, key_file: str | None, db: str | None,
                  config_path: str | None) -> None:
    """Set the datastore ADDRESS - a local directory, user@host:/path or
    ssh://user@host:port/path - the seed's set_datastore.

    The directory must exist: it is marked as the datastore (a file
    .ecloud-datastore with a random id, kept if it is there already), and
    workers push nothing into a root that does not hold that mark (one
    unmounted or renamed). Run it again after moving the datastore."""
    from ecloud.cli.run import set_datastore

    with operator_log(db, config_path, create=True) as store:
        address, identity = set_datastore(store, address, key_file)
    out.print(f"datastore_address = {escape(address)}\ndatastore_id = {identity}",
              highlight=False)


@datastore_group.command("check")
@click.option("--key", "key_file", metavar="PATH", envvar="ECLOUD_DATASTORE_KEY",
              help="SSH private key for an ssh datastore. Default: $ECLOUD_DATASTORE_KEY.")
@common_options
@handle_errors
def datastore_check(key_file: str | None, db: str | None, config_path: str | None) -> None:
    """Test that the datastore is reachable and writable from here; say what is wrong."""
    from ecloud.effects.data.movers import mover_for
    from ecloud.log.rebuild import load_state

    with log_store(db, config_path, create=False) as store:
        context = load_state(store).context
    address, identity = context.get("datastore_address"), context.get("datastore_id")
    if not address:
        raise UserError("no datastore set: ecloud datastore set ADDRESS")
    with mover_for(address, key_file=key_file, identity=identity) as mover:
        problems = mover.check()
    if identity is None:
        problems.append("the datastore was set without its mark (before datastores had one): "
                        "workers push nothing to it; run `ecloud datastore set ADDRESS` again")
    if problems:
        for problem in problems:
            out.print(f"[red]problem[/] {escape(problem)}", highlight=False)
        sys.exit(1)
    out.print(f"datastore {escape(address)}: reachable and writable", highlight=False)


# ---------------------------------------------------------------------- config


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@common_options
@handle_errors
def config_show(db: str | None, config_path: str | None) -> None:
    """Each setting, its value and where the value came from."""
    from rich.table import Table

    from ecloud.cli.common import config_for

    table = Table(title="Configuration (flags > environment > file > defaults)", title_justify="left")
    for col in ("setting", "value", "from"):
        table.add_column(col)
    for name, value, source in config_for(db, config_path).describe():
        table.add_row(name, value, source)
    out.print(table)


def main() -> None:
    cli(prog_name="ecloud")


if __name__ == "__main__":  # pragma: no cover
    main()

