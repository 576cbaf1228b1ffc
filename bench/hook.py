"""How soon the boss terminates a VM powered off behind its back: with
OpenNebula's state hook telling it, and with its polls alone.

    python -m bench.hook                    # 8 power-offs each way, polls every 10 s
    python -m bench.hook --trials 4 --poll 5

One run, one machine, three ways measured alternately so that a drift of
the machine's speed hits all alike: a real ``ecloud-boss --provider
opennebula`` (SQLite log, a private Mosquitto, the unmodified pyone client)
against the fake oned of the tests, whose hook manager runs the real hook
program (``python -m onehook.hook``) for the templates ``ecloud opennebula
hook`` prints:

- ``hook``: hooks installed, the boss polls every ``--poll`` seconds;
- ``poll``: no hook (every run lost), the same polls;
- ``poll 2s``: no hook, the default poll of 2 s.

Each trial spawns one worker VM, waits for its worker, powers the VM off in
the fake oned, and times until the VM is DONE (the boss's terminate).
Prints the medians and the ratio of each to ``hook``, and writes
``bench/results/hook.json``. A polled boss notices on average half a poll
interval late; the hook's latency is one hook run (a Python process and an
MQTT publish) and one look at the pool.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.tuned_broker import TunedMosquitto
from tests.support.fake_oned import FakeOned, ecloud_worker_command

DONE = 6
RESULTS = Path(__file__).resolve().parent / "results" / "hook.json"


def wait(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Rig:
    """One boss, one fake oned, one broker: a way of learning of changes."""

    def __init__(self, root: Path, broker: str, poll: float, hooks: bool) -> None:
        self.root = root
        self.broker = broker
        self.cluster = f"hb{os.getpid() % 10000}{'h' if hooks else 'p'}{int(poll)}"
        self.oned = FakeOned(root / "oned", worker_command=ecloud_worker_command(heartbeat=0.5),
                             delays={"PENDING": 0.05, "PROLOG": 0.05, "BOOT": 0.05}).start()
        self.db = f"sqlite:///{root / 'ecloud.db'}"
        port = broker.rsplit(":", 1)[1]
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("ECLOUD_")},
                    "ECLOUD_ONE_URL": self.oned.url, "ECLOUD_ONE_SESSION": self.oned.session,
                    "ECLOUD_ONE_TEMPLATE": str(self.oned.template_id), "ECLOUD_ONE_DEADLINE": "5",
                    "ECLOUD_ONE_POLL": f"{poll:g}", "ECLOUD_CLUSTER": self.cluster,
                    "ECLOUD_BOSS_ADDRESS": f"127.0.0.1:{port}", "ECLOUD_DB": self.db}
        if hooks:
            self._install_hooks()
        else:
            self.oned.lose_next_callbacks(10**9)
        self.ecloud("context", "set", "kill_retry", "600")
        log = open(root / "boss.log", "ab")  # noqa: SIM115 - the child owns it
        self.boss = subprocess.Popen([sys.executable, "-m", "ecloud.cli.boss", "--broker", broker,
                                      "--provider", "opennebula"], cwd=root, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.spawned = 0

    def ecloud(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args], cwd=self.root,
                              env=self.env, capture_output=True, text=True, check=True,
                              timeout=120).stdout

    def _install_hooks(self) -> None:
        """As an admin would: the script into oned's hooks folder, each template created."""
        password = self.root / "hook.password"
        password.write_text("unused\n")
        written = self.root / "hooks"
        self.ecloud("opennebula", "hook", "--broker", self.broker, "--python", sys.executable,
                    "--password-file", str(password), "--owner", self.oned.uname,
                    "--hooks-dir", str(self.oned.hooks_dir), "--dir", str(written))
        self.oned.install_hooks(written)

    def trial(self) -> float:
        """Seconds from a VM's power-off to its DONE."""
        self.ecloud("workers", "spawn", "1")
        self.spawned += 1
        name = f"ecloud-{self.cluster}-{self.spawned}"
        vm = wait(lambda: next((v for v in self.oned.vms() if v.name == name
                                and v.phase == "RUNNING"), None), 60, f"{name} running")
        wait(lambda: f'"{name}"' in self.ecloud("workers", "list", "--json")
             and any(r["name"] == name and r["worker_status"] == "idle"
                     for r in json.loads(self.ecloud("workers", "list", "--json"))),
             60, f"{name}'s worker idle", interval=0.1)
        start = time.monotonic()
        self.oned.set_phase(vm.id, "POWEROFF")
        wait(lambda: self.oned.vm(vm.id).state == DONE, 120, f"{name} terminated")
        return time.monotonic() - start

    def close(self) -> None:
        if self.boss.poll() is None:
            self.boss.terminate()
            try:
                self.boss.wait(30)
            except subprocess.TimeoutExpired:
                self.boss.kill()
        self.oned.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hook", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="power-offs per way (default 8)")
    parser.add_argument("--poll", type=float, default=10.0,
                        help="seconds between the boss's polls for 'hook' and 'poll' (default 10)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    ways = {"hook": (args.poll, True), "poll": (args.poll, False), "poll 2s": (2.0, False)}
    times: dict[str, list[float]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory(prefix="ecloud-bench-hook-") as tmp, \
            TunedMosquitto().start() as broker:
        rigs = {}
        try:
            for way, (poll, hooks) in ways.items():
                root = Path(tmp) / way.replace(" ", "-")
                root.mkdir()
                rigs[way] = Rig(root, broker.url, poll, hooks)
            for trial in range(args.trials):
                for way, rig in rigs.items():
                    took = rig.trial()
                    times[way].append(took)
                    print(f"trial {trial + 1}/{args.trials} {way:<8} {took:6.3f} s", flush=True)
        finally:
            for rig in rigs.values():
                rig.close()
    base = statistics.median(times["hook"])
    rows = {way: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                  "max_s": round(max(t), 3), "vs_hook": round(statistics.median(t) / base, 1),
                  "poll_s": ways[way][0], "hooks": ways[way][1]} for way, t in times.items()}
    print(f"\npower-off to DONE, {args.trials} trials each (median, min-max):")
    for way, row in rows.items():
        print(f"  {way:<8} {row['median_s']:7.3f} s  ({row['min_s']:.3f}-{row['max_s']:.3f})  "
              f"{row['vs_hook']:>5}x the hook's   [polls every {row['poll_s']:g} s]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"trials": args.trials, "ways": rows,
                                    "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
