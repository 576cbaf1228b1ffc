"""``ecloud web``: the live status page and the Prometheus endpoint."""

from __future__ import annotations

import click

from ecloud.cli.common import common_options, config_for, err, handle_errors
from ecloud.log.url import open_store
from ecloud.web import DEFAULT_ADDRESS


@click.command("web")
@click.option("--address", metavar="HOST:PORT",
              help=f"Where to serve the page (port 0: any free port). Default: the setting "
                   f"web_address ($ECLOUD_WEB_ADDRESS), else {DEFAULT_ADDRESS}.")
@common_options
@handle_errors
def web(address: str | None, db: str | None, config_path: str | None) -> None:
    """Serve a live, read-only status page of the log: progress with an ETA,
    the DAG with task states, workers, failures with stderr tails, the
    autoscaler's decisions and a time slider to any past seq; Prometheus
    metrics at /metrics. Runs until interrupted.

    It answers only to requests naming it (the Host header) localhost,
    127.0.0.1, ::1 or the address it is bound to - bound to 0.0.0.0 or ::,
    this machine's names and addresses - and to the names of the setting
    web_hosts ($ECLOUD_WEB_HOSTS); any other gets 421."""
    from ecloud.web.server import (  # uvicorn: only when serving
        WebServer,
        bind,
        is_loopback,
    )

    config = config_for(db, config_path)
    open_store(config.db, create=False).close()  # a missing log: one clear error now
    sock = bind(address or config.web_address or DEFAULT_ADDRESS)
    server = WebServer(config.db, sock, config.web_hosts or ())
    if not is_loopback(sock):
        err.print("[yellow]note:[/] the page is reachable from the network (it is read-only "
                  "and shows no secrets, but task names, hosts and stderr tails)")
    err.print(f"it answers to the host names {', '.join(server.hosts)} (more: setting "
              "web_hosts)", markup=False)
    err.print(f"loading the log {server.follower.source} ...")
    click.echo(f"serving the status page at {server.url} (metrics at {server.url}metrics)",
               err=False)
    server.serve()
