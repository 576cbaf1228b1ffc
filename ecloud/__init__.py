"""ecloud: distribute shell-command tasks with dependencies over many machines.

The package is event-sourced: ``ecloud.events`` holds the event types, their codec
and the log stores; ``ecloud.projections`` folds events into state (pure);
``ecloud.effects`` performs what the fold asks for; ``ecloud.cli`` is the operator's
command line.
"""

__version__ = "0.1.0"
