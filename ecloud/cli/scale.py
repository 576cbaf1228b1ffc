"""``ecloud scale``: show or change the autoscaling policy.

The policy is context (:data:`ecloud.projections.context.SCALING_KEYS`), so a
change is ``context.set`` events: each value checked as ``ecloud context set``
checks it, the combination checked against the log's head (min_workers no
more than max_workers), and all of them appended in one batch - or none.
"""

from __future__ import annotations

import click
from rich.table import Table

from ecloud.cli.common import (
    common_options,
    handle_errors,
    log_store,
    operator_log,
    out,
)
from ecloud.errors import UserError
from ecloud.events import types as ev
from ecloud.log.rebuild import fold_range, load_state
from ecloud.projections import context as ctx
from ecloud.projections.autoscale import pool
from ecloud.projections.state import State
from ecloud.taskfiles.submit import append_checked


@click.command("scale")
@click.option("--min", "min_workers", metavar="N", help="Worker VMs always kept (live + booting).")
@click.option("--max", "max_workers", metavar="N",
              help="Most worker VMs (live + booting); 0 turns autoscaling off.")
@click.option("--slots-per-worker", "slots_per_worker", metavar="N",
              help="Slots a new worker VM offers (sizes the demand).")
@click.option("--max-booting", "max_booting", metavar="N", help="Most VMs booting at once.")
@click.option("--idle-timeout", "idle_timeout", metavar="S",
              help="Seconds a worker stays idle before its VM is killed (above --min).")
@click.option("--boot-timeout", "boot_timeout", metavar="S",
              help="Seconds a new VM has for its worker to announce before it is replaced.")
@click.option("--spawn-backoff", "spawn_backoff", metavar="S",
              help="Seconds before the next VM request after the cloud refused one (doubles).")
@click.option("--show", is_flag=True, help="Print the policy in force (also what no option does).")
@common_options
@handle_errors
def scale(show: bool, db: str | None, config_path: str | None, **values: str | None) -> None:
    """Show or change the autoscaling policy: how many worker VMs the boss
    keeps, how fast it asks for them and when it lets them go."""
    changes = {key: value.strip() for key, value in values.items() if value is not None}
    if not changes:
        with log_store(db, config_path, create=False) as store:
            render_policy(load_state(store))
        return
    changed: list[str] = []
    with operator_log(db, config_path, create=True) as store:
        problems = [p for key, value in changes.items() if (p := ctx.check(key, value))]
        if problems:  # refused, and logged as refused
            raise UserError("; ".join(problems))

        def build(state: State) -> list:
            problem = ctx.policy_problem({**state.context, **changes})
            if problem:
                raise UserError(problem)
            changed[:] = [key for key in ctx.SCALING_KEYS if key in changes
                          and _parsed(key, changes[key]) != ctx.get(state, key)]
            return [ev.ContextSet(key, changes[key]) for key in changed]

        state, _ = append_checked(store, build)
        state = fold_range(store, state)
    out.print(("set " + ", ".join(f"{key} = {changes[key]}" for key in changed)) if changed
              else "no change")
    render_policy(state)


def _parsed(key: str, value: str) -> object:
    return ctx.KEYS[key].parse(value)


def render_policy(state: State) -> None:
    table = Table(title="Autoscaling policy", title_justify="left")
    for col in ("key", "value", "meaning"):
        table.add_column(col)
    for key in ctx.SCALING_KEYS:
        spec = ctx.KEYS[key]
        value = state.context.get(key, f"[dim]{spec.default} (default)[/]")
        table.add_row(key, value, spec.description)
    out.print(table)
    max_workers = ctx.get(state, "max_workers")
    if not max_workers:
        out.print("autoscaling is off (max_workers is 0)")
    else:
        live, booting = pool(state)
        out.print(f"autoscaling is on: {ctx.get(state, 'min_workers')} to {max_workers} worker "
                  f"VMs; now {live} live, {booting} booting")
