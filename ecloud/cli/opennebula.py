"""``ecloud opennebula hook``: what an OpenNebula admin installs, once, so
that OpenNebula tells the boss when one of this cluster's VMs changes state.

It writes (to ``--dir``) or prints, and installs nothing: hooks are made by
oneadmin on the front-end. Two kinds of file:

- the hook's script, ``ecloud-<cluster>-hook``, for oned's hooks folder
  (``/var/lib/one/remotes/hooks/``): one ``exec`` of :mod:`onehook.hook`
  with this cluster's broker, account and owner, every value shell-quoted;
- one ``onehook create`` template per state change that matters, each
  running that script with ``ARGUMENTS = "$TEMPLATE"`` on stdin
  (``ARGUMENTS_STDIN``): the VM's XML holds its context, passwords
  included, and a command line is readable by every user of the front-end.
  ``CUSTOM`` hooks name their STATE and LCM_STATE by name, as oned requires
  (it refuses numbers).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from ecloud.cli.common import config_for, handle_errors, out
from ecloud.errors import UserError
from onehook.hook import CLUSTER, broker_address

#: (hook name suffix, the state hook's ON and, for CUSTOM, its STATE and LCM_STATE
#: by name): every change after which a VM of ours runs nothing, or runs again
HOOKS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("running", "RUNNING", None, None),
    ("stop", "STOP", None, None),
    ("done", "DONE", None, None),
    ("unknown", "UNKNOWN", None, None),
    ("poweroff", "CUSTOM", "POWEROFF", "LCM_INIT"),
    ("undeployed", "CUSTOM", "UNDEPLOYED", "LCM_INIT"),
    ("suspended", "CUSTOM", "SUSPENDED", "LCM_INIT"),
    ("hold", "CUSTOM", "HOLD", "LCM_INIT"),
    ("boot-failure", "CUSTOM", "ACTIVE", "BOOT_FAILURE"),
    ("prolog-failure", "CUSTOM", "ACTIVE", "PROLOG_FAILURE"),
)


def script_name(cluster: str) -> str:
    return f"ecloud-{cluster}-hook"


def _plain(what: str, value: str) -> str:
    """A value that goes into a template or a script as it is: refused when
    it holds what either would read as syntax."""
    if not value or any(c.isspace() or not c.isprintable() for c in value) \
            or any(c in value for c in "\"'\\$`;|&<>(){}*?!#~"):
        raise UserError(f"{what} {value!r}: no blanks, quotes or shell characters, please")
    return value


def _absolute(what: str, value: str) -> str:
    _plain(what, value)
    if not value.startswith("/"):
        raise UserError(f"{what} {value!r} must be an absolute path on the front-end "
                        "(oned runs hooks from its own folder)")
    return value


def hook_script(cluster: str, broker: str, python: str, user: str, password_file: str,
                ca: str | None, owner: str | None) -> str:
    """The script a hook runs: one exec of onehook.hook, the template on stdin."""
    argv = [python, "-m", "onehook.hook", "--broker", broker, "--cluster", cluster,
            "--user", user, "--password-file", password_file]
    argv += ["--ca", ca] if ca else []
    argv += ["--owner", owner] if owner else []
    return ("#!/bin/sh\n"
            f"# ecloud's OpenNebula state hook for cluster {cluster} (ecloud opennebula hook).\n"
            "# oned gives the VM's XML (base64) on stdin; the boss's poll confirms what it says.\n"
            f"exec {shlex.join(argv)}\n")


def templates(cluster: str, command: str) -> list[tuple[str, str]]:
    """(file name, ``onehook create`` template) for each hook."""
    made = []
    for suffix, on, state, lcm in HOOKS:
        lines = [f'NAME = "ecloud-{cluster}-{suffix}"', 'TYPE = "state"', 'RESOURCE = "VM"',
                 f'ON = "{on}"']
        if on == "CUSTOM":
            lines += [f'STATE = "{state}"', f'LCM_STATE = "{lcm}"']
        lines += [f'COMMAND = "{command}"', 'ARGUMENTS = "$TEMPLATE"', 'ARGUMENTS_STDIN = "yes"',
                  'REMOTE = "NO"']
        made.append((f"ecloud-{cluster}-{suffix}.hook", "\n".join(lines) + "\n"))
    return made


@click.group("opennebula")
def opennebula_group() -> None:
    """OpenNebula: what an admin sets up once on the front-end."""


@opennebula_group.command("hook")
@click.option("--broker", metavar="URL", help="The boss's broker as the front-end reaches it "
              "(mqtt(s)://host:port). Default: the setting broker.")
@click.option("--python", default="/usr/bin/python3", show_default=True,
              help="The front-end's Python (with paho-mqtt and ecloud's onehook package).")
@click.option("--user", default="ecloud-hook", show_default=True,
              help="The hook's broker account (it may publish to ecloud/<cluster>/hook only).")
@click.option("--password-file", default="/var/lib/one/ecloud-hook.password", show_default=True,
              help="Where, on the front-end, that account's password is (readable by oneadmin "
                   "only): a copy of the hook-password file `ecloud broker config` wrote.")
@click.option("--ca", metavar="PATH", help="The broker's CA certificate on the front-end (mqtts).")
@click.option("--owner", metavar="NAME", help="Only VMs of this OpenNebula user count. "
              "Default: the user of the setting one_session.")
@click.option("--hooks-dir", default="/var/lib/one/remotes/hooks", show_default=True,
              help="oned's hooks folder, where the script goes.")
@click.option("--dir", "target", type=click.Path(file_okay=False, path_type=Path),
              help="Write the script and the templates into this folder instead of printing.")
@click.option("--config", "config_path", metavar="PATH", help="Config file.")
@handle_errors
def hook(broker: str | None, python: str, user: str, password_file: str, ca: str | None,
         owner: str | None, hooks_dir: str, target: Path | None, config_path: str | None) -> None:
    """Write (or print) the script and the `onehook create` templates that
    make OpenNebula tell the boss of each state change of this cluster's VMs,
    the moment it happens.

    Nothing is installed: as oneadmin on the front-end, put the script in
    oned's hooks folder (mode 0755), then run `onehook create FILE` for each
    template. The boss logs each callback (vm.callback) and looks at the
    pool at once; the look decides. Without the hooks the boss learns the
    same by polling (setting one_poll), a few seconds later."""
    config = config_for(None, config_path)
    broker = broker or config.broker
    if not broker:
        raise click.UsageError("give --broker (the boss's broker as the front-end reaches it)")
    try:
        broker_address(_plain("--broker", broker))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cluster = config.cluster
    if not CLUSTER.fullmatch(cluster):
        raise UserError(f"cluster {cluster!r} cannot name hooks: letters, digits, '.', '_', '-'")
    if owner is None and config.one_session and ":" in config.one_session:
        owner = config.one_session.split(":", 1)[0]
    script = hook_script(cluster, _plain("--broker", broker), _absolute("--python", python),
                         _plain("--user", user), _absolute("--password-file", password_file),
                         _absolute("--ca", ca) if ca else None,
                         _plain("--owner", owner) if owner else None)
    command = f"{_absolute('--hooks-dir', hooks_dir).rstrip('/')}/{script_name(cluster)}"
    files = [(script_name(cluster), script), *templates(cluster, command)]
    if target is None:
        for name, text in files:
            where = f"(to {command}, mode 0755)" if name == script_name(cluster) \
                else f"(onehook create {name})"
            out.print(f"==> {name} <==  {where}", markup=False, highlight=False)
            out.print(text, markup=False, highlight=False)
        return
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files:
        path = target / name
        path.write_text(text, encoding="utf-8")
        if name == script_name(cluster):
            os.chmod(path, 0o755)
    out.print(f"wrote {len(files)} files to {target}: the script {script_name(cluster)} (for "
              f"{command}) and {len(files) - 1} templates for onehook create", markup=False,
              highlight=False)
