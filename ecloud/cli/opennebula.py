"""``ecloud opennebula hook``: the ``onehook create`` templates that make
OpenNebula tell the boss when one of this cluster's VMs changes state.

It prints and installs nothing else: hooks are made by an OpenNebula admin
(only oneadmin may), once, on the front-end. What the hook runs is
:mod:`onehook.hook`; what the boss makes of it is a hint that its poll of
the pool confirms (README, "OpenNebula").
"""

from __future__ import annotations

import click

from ecloud.cli.common import config_for, handle_errors, out

#: (hook name suffix, the state hook's ON and, for CUSTOM, STATE and LCM_STATE):
#: every change after which a VM of ours runs nothing, or runs again
HOOKS: tuple[tuple[str, str, int | None, int | None], ...] = (
    ("running", "RUNNING", None, None),
    ("stop", "STOP", None, None),
    ("done", "DONE", None, None),
    ("unknown", "UNKNOWN", None, None),
    ("poweroff", "CUSTOM", 8, 0),
    ("undeployed", "CUSTOM", 9, 0),
    ("suspended", "CUSTOM", 5, 0),
    ("hold", "CUSTOM", 2, 0),
    ("boot-failure", "CUSTOM", 3, 36),
    ("prolog-failure", "CUSTOM", 3, 39),
)


def templates(cluster: str, broker: str, python: str, user: str, password_file: str,
              ca: str | None) -> list[tuple[str, str]]:
    """(file name, ``onehook create`` template) for each hook."""
    arguments = (f"--broker {broker} --cluster {cluster} --user {user} "
                 f"--password-file {password_file}" + (f" --ca {ca}" if ca else "") + " $TEMPLATE")
    made = []
    for suffix, on, state, lcm in HOOKS:
        lines = [f'NAME = "ecloud-{cluster}-{suffix}"', 'TYPE = "state"', 'RESOURCE = "VM"',
                 f'ON = "{on}"']
        if on == "CUSTOM":
            lines += [f'STATE = "{state}"', f'LCM_STATE = "{lcm}"']
        lines += [f'COMMAND = "{python}"', f'ARGUMENTS = "-m onehook.hook {arguments}"']
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
@click.option("--config", "config_path", metavar="PATH", help="Config file.")
@handle_errors
def hook(broker: str | None, python: str, user: str, password_file: str, ca: str | None,
         config_path: str | None) -> None:
    """Print the `onehook create` templates that make OpenNebula tell the boss
    of each state change of this cluster's VMs, the moment it happens.

    Nothing is installed: as oneadmin on the front-end, save each template
    to its file and run `onehook create FILE`. The boss logs each callback
    (vm.callback) and looks at the pool at once; the look decides. Without
    the hooks the boss learns the same by polling (setting one_poll), a few
    seconds later."""
    config = config_for(None, config_path)
    broker = broker or config.broker
    if not broker:
        raise click.UsageError("give --broker (the boss's broker as the front-end reaches it)")
    for name, text in templates(config.cluster, broker, python, user, password_file, ca):
        out.print(f"# {name}  (onehook create {name})", markup=False, highlight=False)
        out.print(text, markup=False, highlight=False)
