#!/bin/sh
# ecloud worker bootstrap for OpenNebula contextualization.
#
# Give it to the worker template as START_SCRIPT_BASE64 (see the README's
# template example). OpenNebula's context package runs it at every boot as
# root, with the context variables exported: BOSS_ADDRESS (host:port of the
# boss's MQTT broker; or BOSS_ADDRESS_B64, base64, as the boss passes it),
# ECLOUD_CLUSTER(_B64), ECLOUD_WORKER_ID (the VM's name), VMID,
# and optionally ECLOUD_SLOTS and ECLOUD_PIP_SPEC (what pip installs; default
# "ecloud", e.g. a wheel URL on the datastore).
#
# ECLOUD_DATASTORE_SSH_KEY_B64, if the boss has a datastore_key_file, is the
# datastore's ssh private key. This script never decodes, prints or logs it:
# the agent reads it from the context file and keeps it in a file of mode
# 0600 under its work dir (worker/settings.py). Only without the context
# package does this script copy it (still base64) into the context file it
# writes, which is 0600. It is removed from the environment before the agent
# starts, so that nothing the agent runs inherits it.
#
# It installs ecloud into a virtual environment (once), then runs
# `ecloud-worker --context-file <the context file>` as a systemd service that
# restarts on failure, so a crashed or killed agent comes back by itself and
# reannounces. Without systemd it falls back to a restart loop.
#
# For tests: ECLOUD_ROOT prefixes every path it writes, SYSTEMCTL replaces
# systemctl, and an existing $ECLOUD_HOME/bin/ecloud-worker skips the install.
set -eu

ROOT="${ECLOUD_ROOT:-}"
ECLOUD_HOME="${ECLOUD_HOME:-/opt/ecloud}"
SYSTEMCTL="${SYSTEMCTL:-systemctl}"
PIP_SPEC="${ECLOUD_PIP_SPEC:-ecloud}"
UNIT="$ROOT/etc/systemd/system/ecloud-worker.service"

say() { echo "ecloud-bootstrap: $*" >&2; }

# the boss passes its values base64-encoded (X_B64): decode what we use here
if [ -z "${BOSS_ADDRESS:-}" ] && [ -n "${BOSS_ADDRESS_B64:-}" ]; then
    BOSS_ADDRESS="$(printf %s "$BOSS_ADDRESS_B64" | base64 -d)"
fi
if [ -z "${ECLOUD_CLUSTER:-}" ] && [ -n "${ECLOUD_CLUSTER_B64:-}" ]; then
    ECLOUD_CLUSTER="$(printf %s "$ECLOUD_CLUSTER_B64" | base64 -d)"
fi
if [ -z "${BOSS_ADDRESS:-}" ]; then
    say "BOSS_ADDRESS is not in the VM's context: the worker would not know where to connect"
    exit 1
fi

# The context file the agent reads (it holds BOSS_ADDRESS, ECLOUD_CLUSTER, ...).
CONTEXT_FILE=""
for candidate in "$ROOT/var/run/one-context/one_env" "$ROOT/mnt/context/context.sh"; do
    if [ -f "$candidate" ]; then CONTEXT_FILE="$candidate"; break; fi
done
if [ -z "$CONTEXT_FILE" ]; then
    # not run by the context package: keep what we were given
    CONTEXT_FILE="$ROOT/etc/ecloud/context.sh"
    mkdir -p "$(dirname "$CONTEXT_FILE")"
    umask 077
    {
        echo "BOSS_ADDRESS='$BOSS_ADDRESS'"
        echo "ECLOUD_CLUSTER='${ECLOUD_CLUSTER:-ecloud}'"
        echo "ECLOUD_WORKER_ID='${ECLOUD_WORKER_ID:-$(hostname)}'"
        [ -n "${VMID:-}" ] && echo "VMID='$VMID'"
        [ -n "${ECLOUD_SLOTS:-}" ] && echo "ECLOUD_SLOTS='$ECLOUD_SLOTS'"
        # into the file only (0600: umask 077 above); echo is a builtin, so the
        # key is in no process's arguments either
        if [ -n "${ECLOUD_DATASTORE_SSH_KEY_B64:-}" ]; then
            echo "ECLOUD_DATASTORE_SSH_KEY_B64='$ECLOUD_DATASTORE_SSH_KEY_B64'"
        fi
        # the VM's own broker account and the cluster's CA (ecloud broker config)
        if [ -n "${ECLOUD_BROKER_PASSWORD_B64:-}" ]; then
            echo "ECLOUD_BROKER_PASSWORD_B64='$ECLOUD_BROKER_PASSWORD_B64'"
        fi
        if [ -n "${ECLOUD_BROKER_CA_PEM_B64:-}" ]; then
            echo "ECLOUD_BROKER_CA_PEM_B64='$ECLOUD_BROKER_CA_PEM_B64'"
        fi
    } > "$CONTEXT_FILE"
fi
# the agent takes its secrets from the context file: nothing it starts inherits them
unset ECLOUD_DATASTORE_SSH_KEY_B64 ECLOUD_DATASTORE_SSH_KEY ECLOUD_BROKER_PASSWORD_B64 \
    ECLOUD_BROKER_PASSWORD

# Tasks run as an unprivileged user, never as root: ECLOUD_RUN_AS from the
# context, else "ecloud-task", made here if missing (USERADD replaces useradd
# for tests).
RUN_AS="${ECLOUD_RUN_AS:-ecloud-task}"
USERADD="${USERADD:-useradd}"
if [ -n "$ROOT" ] || ! id "$RUN_AS" >/dev/null 2>&1; then
    "$USERADD" --system --user-group --home-dir /var/lib/ecloud/home --create-home \
        --shell /usr/sbin/nologin "$RUN_AS" || {
        say "cannot create the user $RUN_AS that tasks run as"; exit 1; }
fi

if [ ! -x "$ROOT$ECLOUD_HOME/bin/ecloud-worker" ]; then
    say "installing $PIP_SPEC into $ECLOUD_HOME"
    python3 -m venv "$ROOT$ECLOUD_HOME"
    "$ROOT$ECLOUD_HOME/bin/pip" install --quiet "$PIP_SPEC"
fi

COMMAND="$ECLOUD_HOME/bin/ecloud-worker --context-file $CONTEXT_FILE --work-dir /var/lib/ecloud/work --run-as $RUN_AS"

if command -v "$SYSTEMCTL" >/dev/null 2>&1 && { [ -n "$ROOT" ] || [ -d /run/systemd/system ]; }; then
    mkdir -p "$(dirname "$UNIT")"
    cat > "$UNIT" <<UNIT_END
[Unit]
Description=ecloud worker agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$COMMAND
Restart=always
RestartSec=5
# SIGTERM drains: running tasks may finish before the agent says goodbye
KillMode=mixed
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
UNIT_END
    "$SYSTEMCTL" daemon-reload
    "$SYSTEMCTL" enable --now ecloud-worker.service
    say "ecloud-worker.service started (restarts on failure)"
else
    say "no systemd: running the agent in a restart loop"
    nohup sh -c "while true; do $COMMAND; sleep 5; done" >> "$ROOT/var/log/ecloud-worker.log" 2>&1 &
fi
