"""HTCondor DAGMan input files, read into ecloud's terms (parsing only, nothing runs).

Three parts, each built from the HTCondor manual (``docs/automated-workflows``
and the ``condor_submit`` man page):

* :mod:`~ecloud.taskfiles.dagman.dagfile` - a ``.dag`` file, with its INCLUDEs
  and SPLICEs, as a :class:`Dag` of :class:`Node` objects and edges (the
  classes in ``dagmodel``; the parser's layers in ``daglines``, ``dagnodes``
  and ``dagcommands``);
* :mod:`~ecloud.taskfiles.dagman.submitfile` - a node's submit description
  (``condor_submit`` syntax, ``$(macro)`` expansion) as a
  :class:`SubmitDescription`: the argv, environment and resources of one job
  (the classes in ``submitmodel``; value syntaxes in ``submitvalues``, macros
  in ``submitmacros``, the line reader in ``submitreader``);
* :mod:`~ecloud.taskfiles.dagman.rescue` - DAGMan's partial rescue files
  (``x.dag.rescue001``, ...): finding, reading, writing and applying them.

Bad input never ends in a traceback: every problem found is listed, each with
its ``file:line:``, in one :class:`ecloud.errors.ValidationError`.
"""

from ecloud.taskfiles.dagman.dagfile import (
    SCRIPT_MACROS,
    AbortDagOn,
    Dag,
    Ignored,
    InlineSubmit,
    Node,
    NodeVar,
    Script,
    expand_script_macros,
    parse_dag,
)
from ecloud.taskfiles.dagman.rescue import (
    apply_rescue,
    load_dag,
    newest_rescue,
    next_rescue_path,
    read_rescue,
    rescue_path,
    retire_rescues_after,
    write_rescue,
)
from ecloud.taskfiles.dagman.submitfile import (
    IgnoredCommand,
    SubmitDescription,
    parse_arguments,
    parse_environment,
    parse_memory_mib,
    parse_node_submit,
    parse_submit_file,
    parse_submit_text,
)

__all__ = [
    "SCRIPT_MACROS",
    "AbortDagOn",
    "Dag",
    "Ignored",
    "IgnoredCommand",
    "InlineSubmit",
    "Node",
    "NodeVar",
    "Script",
    "SubmitDescription",
    "apply_rescue",
    "expand_script_macros",
    "load_dag",
    "newest_rescue",
    "next_rescue_path",
    "parse_arguments",
    "parse_dag",
    "parse_environment",
    "parse_memory_mib",
    "parse_node_submit",
    "parse_submit_file",
    "parse_submit_text",
    "read_rescue",
    "rescue_path",
    "retire_rescues_after",
    "write_rescue",
]
