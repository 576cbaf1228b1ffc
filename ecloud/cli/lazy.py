"""Commands imported only when they run: ``ecloud --help`` and every
command pay for the modules of the command they run, not for all of them
(``ecloud run`` alone brings in pyone, requests, paho and the boss).

The short help ``ecloud --help`` shows for a lazy command is kept here, in
:data:`LAZY` beside where it lives; tests/test_cli_speed.py checks that each
is the command's own (its docstring's first sentence), so they cannot drift.
"""

from __future__ import annotations

import importlib

import click

#: name -> (module, attribute, short help)
LAZY: dict[str, tuple[str, str, str]] = {
    "broker": ("ecloud.cli.security", "broker_group",
             "The cluster's MQTT broker."),
    "certs": ("ecloud.cli.security", "certs_group",
             "The cluster's certificate authority and the broker's certificate."),
    "graph": ("ecloud.cli.graph", "graph",
             "Export the task DAG with each task's state (or each group's counts)."),
    "import": ("ecloud.cli.imports", "import_group",
             "Make task files from workflows described in other formats."),
    "logs": ("ecloud.cli.logs", "logs",
             "The stdout and stderr of a task's attempt: from the datastore (staged results), "
             "a local worker's directory, the worker itself over MQTT, or - when none of these "
             "has them - the last 4 KiB the log kept."),
    "opennebula": ("ecloud.cli.opennebula", "opennebula_group",
             "OpenNebula: what an admin sets up once on the front-end."),
    "run": ("ecloud.cli.run", "run",
             "Run the tasks of FILE to the end on local worker processes."),
    "scale": ("ecloud.cli.scale", "scale",
             "Show or change the autoscaling policy: how many worker VMs the boss keeps, how "
             "fast it asks for them and when it lets them go."),
    "tasks": ("ecloud.cli.tasks", "tasks",
             "List the tasks that match every filter given (all tasks without one)."),
    "web": ("ecloud.cli.web", "web",
             "Serve a live, read-only status page of the log: progress with an ETA, the DAG "
             "with task states, workers, failures with stderr tails, the autoscaler's "
             "decisions and a time slider to any past seq; Prometheus metrics at /metrics."),
    "workers": ("ecloud.cli.workers", "workers_group",
             "Worker VMs: spawn, list, kill (the seed's admin commands)."),
}


class LazyGroup(click.Group):
    """A group whose :data:`LAZY` commands are imported when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY and name not in self.commands:
            module, attribute, _ = LAZY[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """As click resolves, but a typo's suggestions include the commands
        not imported yet (click suggests from the loaded ones only)."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand:
            raise click.exceptions.NoSuchCommand(
                click.utils.make_str(args[0]), possibilities=self.list_commands(ctx),
                ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists commands, with the lazy ones' help from the table."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in LAZY and name not in self.commands:
                rows.append((name, click.Command(name, help=LAZY[name][2]).get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


__all__ = ["LAZY", "LazyGroup"]
