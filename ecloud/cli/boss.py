"""``ecloud-boss``: the long-running boss of a cluster.

Folds the log, listens to the workers on MQTT, performs the effects, and
schedules; stops cleanly on SIGTERM or SIGINT (the batch in hand is
committed first, nothing is lost). Workers come from elsewhere (started by
hand, or by a provider: ``--local N`` keeps N worker processes on this
machine). Like VMs, local workers outlive the boss: a restarted boss adopts
those still running, and what they reported meanwhile waits for it at the
broker (the boss's MQTT session is persistent).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import click

from ecloud.boss.address import own_address
from ecloud.boss.loop import Boss
from ecloud.cli.common import common_options, config_for, err, handle_errors
from ecloud.effects.providers.local import LocalProvider, become_subreaper
from ecloud.effects.providers.opennebula import DatastoreKeyError, OpenNebulaProvider
from ecloud.errors import ConfigError, UserError
from ecloud.events import types as ev
from ecloud.log.url import open_store
from ecloud.security.setup import BrokerSecurity, broker_security


def request_local_vms(state, provider: LocalProvider, workers: int, reason: str) -> list:
    """Requests that bring the local workers up to ``workers``. A VM counts
    while it is on its way (requested) or its process runs - those of an
    earlier boss that still run count too (the provider adopted them). A
    worker that exited with an error of its own is not replaced: it would
    fail again (its VM's failure says why). New VMs get fresh names (names
    are never reused in a log)."""
    since = state.boss_started_at if state.boss_started_at is not None else float("inf")
    if any(vm.failed_at is not None and vm.failed_at >= since for vm in state.vms.values()):
        return []  # a worker failed under this boss: say why, do not loop on it
    running = set(provider.running())
    live = 0
    for name in state.open_vms:
        vm = state.vms[name]
        if vm.status == "requested" or (vm.vm_name in running and vm.status != "killing"):
            live += 1
    first = len(state.vms) + 1
    return [ev.VMRequested(f"local-{k}", reason) for k in range(first, first + max(0, workers - live))]


def make_provider(kind: str | None, config, broker_url: str, slots: int,
                  security: BrokerSecurity | None = None, **local: Any):
    """The provider of that kind; ``local`` goes to :class:`LocalProvider`
    (``work_root``, ``debug``, ``boss_grace``)."""
    credentials = security.workers if security is not None else None
    if kind == "local":
        return LocalProvider(broker_url, config.cluster, slots=slots, credentials=credentials,
                             ca_file=config.broker_ca, **local)
    if kind == "opennebula":
        missing = [name for name in ("one_url", "one_session", "one_template")
                   if getattr(config, name) is None]
        if missing:
            raise UserError(f"--provider opennebula needs the setting(s) {', '.join(missing)} "
                            "(ECLOUD_ONE_URL, ECLOUD_ONE_SESSION, ECLOUD_ONE_TEMPLATE)")
        try:
            # reads the datastore key file now: a bad one stops the boss at start
            return OpenNebulaProvider(config.one_url, config.one_session, config.one_template,
                                      f"ecloud-{config.cluster}-",
                                      {"BOSS_ADDRESS": broker_url,
                                       "ECLOUD_CLUSTER": config.cluster},
                                      deadline=config.one_deadline,
                                      kill_orphans_after=config.one_kill_orphans_after,
                                      datastore_key_file=config.datastore_key_file,
                                      credentials=credentials)
        except DatastoreKeyError as exc:
            origin = config.origins.get("datastore_key_file", "default")
            raise ConfigError(f"setting datastore_key_file ({origin}): {exc}") from None
    return None


def start_web(address: str | None, db_url: str, hosts: tuple[str, ...] | None = None):
    """The status page beside the boss, if an address is given: it follows
    the log on its own connection (a bad address stops the boss at start);
    ``hosts`` are more names it answers to (the setting web_hosts)."""
    if not address:
        return None
    from ecloud.web.server import WebServer, bind

    server = WebServer(db_url, bind(address), hosts or ()).start()
    err.print(f"status page at {server.url} (host names: {', '.join(server.hosts)})",
              markup=False)
    return server


def boss_address_events(state, configured: str | None, broker_url: str) -> list:
    """Set ``boss_address`` when the context has none (after ``ecloud context
    drop``, or on a new log), so that new workers learn where to connect."""
    if "boss_address" in state.context:
        return []
    address, source = own_address(configured, broker_url)
    logging.getLogger("ecloud.boss").info("boss_address = %s (from %s)", address, source)
    return [ev.ContextSet("boss_address", address)]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--broker", metavar="URL", help="MQTT broker (mqtt://host:port). Default: "
              "$ECLOUD_BROKER or the config file's broker.")
@click.option("--local", "workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep N local worker processes (they outlive the boss, which adopts them again "
                   "on restart).")
@click.option("--slots", type=click.IntRange(min=1), default=1, show_default=True,
              help="Slots per local worker.")
@click.option("--provider", "provider_kind", type=click.Choice(["local", "opennebula"]), default=None,
              help="Where worker VMs come from: local processes (the default with --local), or "
                   "OpenNebula (settings one_url, one_session, one_template; datastore_key_file "
                   "gives new VMs the datastore's ssh key). Without one, VMs asked for are only "
                   "logged.")
@click.option("--web", "web_address", metavar="HOST:PORT",
              help="Also serve the status page and /metrics there (see ecloud web). Default: the "
                   "setting web_address; none: no page.")
@click.option("--verbose", "-v", is_flag=True, help="Log every batch and effect.")
@common_options
@handle_errors
def boss(broker: str | None, workers: int, slots: int, provider_kind: str | None,
         web_address: str | None, verbose: bool, db: str | None, config_path: str | None) -> None:
    """Run the boss: turn every worker message into a logged event, perform
    the effects, schedule the ready tasks."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = config_for(db, config_path)
    broker_url = broker or config.broker
    if not broker_url:
        raise UserError("no MQTT broker: give --broker mqtt://host:port (or set ECLOUD_BROKER)")
    if provider_kind == "opennebula" and workers:
        raise UserError("--local N runs local workers: it does not go with --provider opennebula")
    security = broker_security(config, broker_url)
    provider = make_provider(provider_kind or ("local" if workers else None), config, broker_url,
                             slots, security)
    if config.datastore_key_file is not None and not isinstance(provider, OpenNebulaProvider):
        logging.getLogger("ecloud.boss").warning(
            "datastore_key_file is set but only --provider opennebula hands it to workers")
    store = open_store(config.db, create=True)
    if isinstance(provider, LocalProvider):
        provider.log_id = store.log_id()  # its workers carry it: told from another log's
        become_subreaper()  # what a worker killed outright leaves behind comes to us
    web = start_web(web_address or config.web_address, config.db, config.web_hosts)

    def on_start(state) -> list:
        events = boss_address_events(state, config.boss_address, broker_url)
        if isinstance(provider, OpenNebulaProvider):
            # new VMs are told where to connect: the context's address, or the one just found
            address = state.context.get("boss_address") or events[0].value
            provider.context["BOSS_ADDRESS"] = address
        if isinstance(provider, LocalProvider):
            provider.adopt()  # the lease is ours: so are the local workers of an earlier boss
        return events

    def keep_local(state) -> list:
        """Every turn: as many local workers as --local says (a worker that
        went away is replaced)."""
        return request_local_vms(state, provider, workers, "ecloud-boss --local")

    the_boss = Boss(store, broker_url, provider=provider, cluster=config.cluster, label="ecloud-boss",
                    snapshot_every=config.snapshot_every, snapshot_interval=config.snapshot_interval,
                    takeover_after=config.takeover_after, resend_after=config.resend_after,
                    observe_every=config.one_poll,
                    on_start=on_start, auth=security.auth, accounts=security.accounts,
                    upkeep=keep_local if isinstance(provider, LocalProvider) and workers else None)
    signal.signal(signal.SIGTERM, lambda *_: the_boss.stop())
    signal.signal(signal.SIGINT, lambda *_: the_boss.stop())
    try:
        the_boss.run()
    finally:
        if web is not None:
            web.stop()
        store.close()
    if isinstance(provider, LocalProvider) and provider.running():
        err.print(f"boss stopped; local workers keep running for the next boss: "
                  f"{', '.join(provider.running())}")
    else:
        err.print("boss stopped")


def main() -> None:
    boss(prog_name="ecloud-boss")


if __name__ == "__main__":  # pragma: no cover
    main()

