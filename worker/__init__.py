"""The ecloud worker agent (``ecloud-worker``): runs the boss's tasks on one machine.

What it does, in order of a worker's life:

- **Announce.** It connects to the boss's MQTT broker with a persistent
  session (client id ``ecloud-<cluster>-<worker id>``) and a last will - a
  ``lost`` report the broker publishes if the connection dies without a
  goodbye. After every (re)connection it subscribes to its own ``to`` topic
  and sends a ``hello`` with its slots, the protocol version, the host name,
  the OpenNebula VM id and an *incarnation* (random per process start, so the
  boss can tell a restart from a reconnect).
- **Run.** Each dispatched (task, attempt) runs at most once per process, in a
  fresh directory ``<work dir>/<task id>/<attempt>/``, in its own process
  group, with stdout and stderr written to files there, the task's
  environment added to the worker's plus ``ECLOUD_TASK_ID`` and
  ``ECLOUD_ATTEMPT``. Slots are respected (an overcommitted dispatch waits
  for free slots). A timeout or a cancel kills the whole process group
  (SIGTERM, SIGKILL 5 s later).
- **Report.** ``started`` right after the spawn, ``finished`` (exit code or
  signal, duration, reason, the last 4 KiB of stdout and stderr) at the exit.
  Every report but a heartbeat is kept and resent (2 s, backing off to 10 s)
  until the boss acknowledges it, because the boss acknowledges only what it
  has committed to its log. Heartbeats list what is running.
- **Obey.** ``refuse`` from the boss exits with status 3; ``reannounce`` sends a
  fresh hello; a malformed boss message is logged and ignored.
- **Leave.** SIGTERM/SIGINT stops taking dispatches, lets running tasks finish
  (up to ``--drain-timeout``) and their reports be acknowledged, kills what
  still runs, says ``bye``, waits briefly for its ack and disconnects cleanly,
  so the will is not published. Exit status 0.

Modules: :mod:`ecloud_worker.agent` (main loop and command line), :mod:`ecloud_worker.runner`
(processes), :mod:`ecloud_worker.outbox` (acks and resends), :mod:`ecloud_worker.settings`
(flags, environment, context file); around a task's command, :mod:`ecloud_worker.stage` (data
staging) and :mod:`ecloud_worker.node` (a workflow node's pre and post scripts, with
:mod:`ecloud_worker.macros` and :mod:`ecloud_worker.placement`: workdir, stdin/stdout/stderr).
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """The ``ecloud-worker`` command (imported lazily, so that
    ``python -m ecloud_worker.agent`` does not import the agent twice)."""
    from ecloud_worker.agent import main as run

    run()
