"""``ecloud certs init`` and ``ecloud broker config``: a secured broker for
a cluster (TLS, no anonymous clients, an account per worker, ACL by pattern).

See :mod:`ecloud.security.certs` and :mod:`ecloud.security.broker_config`.
"""

from __future__ import annotations

import click

from ecloud.cli.common import err, handle_errors, out
from ecloud.config import load_config
from ecloud.errors import UserError
from ecloud.security.broker_config import resolve_broker_user, write_broker_config
from ecloud.security.certs import init_certs


def _cluster(cluster: str | None) -> str:
    if cluster:
        return cluster
    return load_config({}).cluster


@click.group("certs")
def certs_group() -> None:
    """The cluster's certificate authority and the broker's certificate."""


@certs_group.command("init")
@click.option("--dir", "folder", metavar="DIR", required=True,
              help="Folder to write ca.pem/.key, server.pem/.key, client.pem/.key into (made "
                   "0700; nothing is overwritten).")
@click.option("--host", "hosts", metavar="NAME", multiple=True, required=True,
              help="A name or address workers reach the broker by (repeat for several); the "
                   "server certificate is valid for exactly these.")
@click.option("--cluster", metavar="NAME", help="Cluster name for the certificates' names. "
              "Default: the configured cluster.")
@click.option("--days", type=click.IntRange(min=1), default=825, show_default=True,
              help="How long the certificates are valid.")
@handle_errors
def certs_init(folder: str, hosts: tuple[str, ...], cluster: str | None, days: int) -> None:
    """Create a CA and the broker's server certificate (and a client one).

    The boss and the workers trust this CA alone; keep ca.key somewhere safe
    (it is needed again only to make new certificates)."""
    for path in init_certs(folder, list(hosts), _cluster(cluster), days):
        out.print(f"wrote {path}", highlight=False)


@click.group("broker")
def broker_group() -> None:
    """The cluster's MQTT broker."""


@broker_group.command("config")
@click.option("--dir", "folder", metavar="DIR", required=True,
              help="The folder of `ecloud certs init`; the configuration goes beside the "
                   "certificates.")
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True,
              help="The TLS listener's port.")
@click.option("--bind", metavar="ADDRESS", default="0.0.0.0", show_default=True,
              help="The address the listener binds.")
@click.option("--host", metavar="NAME", default="127.0.0.1", show_default=True,
              help="The name the boss reaches the broker by, for the broker URL it is given "
                   "(it must be one of the certificate's --host names).")
@click.option("--cluster", metavar="NAME", help="Cluster whose topics the ACL covers. Default: "
              "the configured cluster.")
@click.option("--user", metavar="NAME", help="The account the broker runs as: Mosquitto, started "
              "as root, switches to it at once, so it gets what the broker reads (its group, "
              "mode 0640) and writes (DIR/data, the log). Default: mosquitto if this machine has "
              "that account (and this runs as root), else none: the broker runs as whoever "
              "starts it.")
@handle_errors
def broker_config(folder: str, port: int, bind: str, host: str, cluster: str | None,
                  user: str | None) -> None:
    """Write a Mosquitto configuration: a TLS listener, no anonymous access,
    a password file the boss keeps (one account per worker VM, removed when
    the VM goes) and an ACL confining each worker to its own topics.

    Run the broker with `mosquitto -d -c DIR/mosquitto.conf` on the boss's
    machine, as root: it drops to the --user account (the boss writes its
    password file and signals it to reload), and give the boss the settings
    of DIR/ecloud.toml."""
    if any(c in host for c in "/ :") and not host.startswith("["):
        raise UserError(f"--host {host!r}: want a host name or an address")
    from rich.markup import escape  # rich is slow to import: only when it is needed

    account, warning = resolve_broker_user(user)
    files = write_broker_config(folder, _cluster(cluster), port, bind, host, account)
    for message in ([warning] if warning else []) + list(files.warnings):
        err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)
    out.print(f"wrote {files.conf} (and acl, passwd, passwd.static, boss-password, "
              f"worker-secret, hook-password in {files.folder})", highlight=False)
    if files.user is not None:
        out.print(f"the broker runs as:  {files.user} (it may read the configuration, acl, "
                  "passwd and the server's certificate and key through its group; it owns "
                  f"{files.pid.parent} and the log)", highlight=False)
    out.print(f"OpenNebula's state hook: copy {files.folder / 'hook-password'} to the front-end "
              "(see `ecloud opennebula hook --help`)", highlight=False)
    out.print(f"the boss's settings: {files.toml}", highlight=False)
    out.print(f"start the broker:    mosquitto -d -c {files.conf}", highlight=False)
