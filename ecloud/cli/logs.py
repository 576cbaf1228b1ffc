"""``ecloud logs TASK``: an attempt's stdout and stderr (see :mod:`ecloud.inspect.attempt_logs`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from ecloud.cli.common import common_options, config_for, err, handle_errors
from ecloud.errors import UserError
from ecloud.inspect.attempt_logs import (
    STREAMS,
    DatastoreReader,
    LocalReader,
    TailsReader,
    Unavailable,
    WorkerReader,
    copy_output,
    find_attempt,
    still_running,
)
from ecloud.log.rebuild import load_state
from ecloud.log.url import open_store


def _worker_reader(attempt, config, broker: str | None):
    from ecloud.security.setup import broker_security

    url = broker or config.broker
    auth = broker_security(config, url).auth if url else None
    return WorkerReader(attempt, url, config.cluster, auth)


@click.command("logs")
@click.argument("task_id", metavar="TASK")
@click.option("--attempt", type=click.IntRange(min=1), help="Which attempt (default: the latest).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing what a running attempt writes until it ends.")
@click.option("--stream", type=click.Choice(("both",) + STREAMS), default="both", show_default=True,
              help="The task's stdout goes to stdout, its stderr to stderr; or only one of them.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".ecloud-workers"), show_default=True,
              help="Where local workers (ecloud run, ecloud-boss --local) keep their attempts.")
@click.option("--broker", metavar="URL",
              help="MQTT broker to ask a worker through. Default: the setting broker.")
@click.option("--key", "key_file", metavar="PATH", envvar="ECLOUD_DATASTORE_KEY",
              help="SSH private key for an ssh datastore. Default: $ECLOUD_DATASTORE_KEY.")
@common_options
@handle_errors
def logs(task_id: str, attempt: int | None, follow: bool, stream: str, work_dir: Path,
         broker: str | None, key_file: str | None, db: str | None, config_path: str | None) -> None:
    """The stdout and stderr of a task's attempt: from the datastore (staged
    results), a local worker's directory, the worker itself over MQTT, or -
    when none of these has them - the last 4 KiB the log kept."""
    config = config_for(db, config_path)
    streams = STREAMS if stream == "both" else (stream,)
    with open_store(config.db, create=False) as store:
        state = load_state(store)
        found = find_attempt(store, state, task_id, attempt)
        running = still_running(store, state, found)
        places = [
            lambda: DatastoreReader(found, state.context.get("datastore_address"), key_file,
                                    streams),
            lambda: LocalReader(found, work_dir),
            lambda: _worker_reader(found, config, broker),
            lambda: TailsReader(found),
        ]
        if running:
            places = places[1:3]  # nothing is staged, nor in the log, before the end
        reasons = []
        for make in places:
            try:
                reader = make()
            except Unavailable as exc:
                reasons.append(str(exc))
                continue
            try:
                if isinstance(reader, TailsReader):
                    err.print(f"[yellow]note:[/] {escape(task_id)} attempt {found.attempt}'s output is "
                              f"neither staged nor on a reachable worker ({'; '.join(reasons)}): "
                              "showing only the last 4 KiB the log kept", highlight=False)
                outs = {s: (sys.stdout.buffer if s == "stdout" else sys.stderr.buffer)
                        for s in streams}
                copy_output(reader, outs, follow=follow and running,
                            running=lambda: still_running(store, state, found))
                return
            except Unavailable as exc:
                raise UserError(f"reading {task_id} attempt {found.attempt} from "
                                f"{reader.where} failed: {exc}") from None
            finally:
                close = getattr(reader, "close", None)
                if close is not None:
                    close()
        raise UserError(f"cannot find the output of {task_id} attempt {found.attempt} (on "
                        f"{found.worker_id}): " + "; ".join(reasons))
