"""The boss's beat: a retained message on the cluster's boss topic that says
this boss is there (and, as its will, that it is gone), and what it hears
there from other bosses.

Workers that hear no boss for their grace period stop their attempts and
exit, so the beat runs on a thread of its own: it goes on while the loop
waits on the database (a table lock can hold it for minutes). The beat also
finds a second boss *of another log* on the same cluster and broker, which
would take this one's workers for its own or for strangers: the younger of
the two stops (:attr:`Presence.conflict`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ecloud import wire

#: seconds: a beat older than this (by its own clock) is a retained one, not news
STALE_BEAT = 30.0
#: seconds a starting boss listens for the retained beat of another boss
BEAT_LISTEN = 0.5

Publish = Callable[..., None]


class Presence:
    def __init__(self, cluster: str, boss_id: str, broker: str, beat_every: float) -> None:
        self.cluster = cluster
        self.boss_id = boss_id
        self.broker = broker
        #: seconds between beats: well inside the shortest grace of its workers
        self.beat_every = beat_every
        self.topic = wire.boss_topic(cluster)
        self.started_at = 0.0
        self.log_id = ""
        #: why this boss must stop: another log's boss runs this cluster (None: none)
        self.conflict: str | None = None
        self._heard = threading.Event()  # a beat (the retained one) came
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publish: Publish | None = None

    def will(self) -> tuple[str, bytes]:
        """What the broker says for this boss if its connection dies."""
        return self.topic, wire.dumps(wire.BossBeat(self.boss_id, False))

    def attach(self, publish: Publish, log_id: str) -> None:
        """Beat through ``publish`` for the log ``log_id``, from now on."""
        self.started_at = time.time()
        self.log_id = log_id
        self._publish = publish

    def listen(self) -> None:
        """Wait (briefly) for the retained beat that comes right after the
        subscription: a boss of another log on this cluster is found before
        this one does anything."""
        self._heard.wait(BEAT_LISTEN)

    def start(self, fenced: Callable[[], bool]) -> None:
        """Beat every :attr:`beat_every` seconds until stopped, or until
        ``fenced()`` says another boss took the log over."""
        def beating() -> None:
            while not self._stop.wait(self.beat_every):
                if fenced():
                    return
                self.beat()

        self._thread = threading.Thread(target=beating, name="boss-beat", daemon=True)
        self._thread.start()

    def beat(self, up: bool = True) -> None:
        """Tell every worker (retained) that this boss is there, or gone."""
        if self._publish is not None:
            self._publish(self.topic,
                          wire.dumps(wire.BossBeat(self.boss_id, up, started=self.started_at,
                                                   at=time.time(), log=self.log_id)),
                          retain=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def heard(self, payload: bytes) -> None:
        """On paho's thread: a beat on this cluster's boss topic. A fresh beat
        of a boss of *another log* that became active before this one means
        two logs' bosses share this cluster name on this broker: each would
        take the other's workers for its own or for strangers. This one (the
        younger) stops, saying so - before it does anything, when the beat is
        the retained one it hears as it starts (a standby of the same log
        taking over is no conflict)."""
        try:
            beat = wire.parse_boss_beat(payload)
        except wire.WireError:
            return
        finally:
            self._heard.set()
        now = time.time()
        if beat.boss == self.boss_id or not beat.up or abs(now - beat.at) > STALE_BEAT:
            return
        if beat.log == self.log_id or not beat.log:
            return
        if (beat.started, beat.boss) > (self.started_at, self.boss_id):
            return  # the younger of the two: it is the one to stop
        if self.conflict is None:
            self.conflict = (f"another boss ({beat.boss}, active since "
                             f"{time.strftime('%H:%M:%S', time.gmtime(beat.started))} UTC) runs "
                             f"cluster {self.cluster!r} on the broker {self.broker}: two logs' "
                             "bosses cannot share a cluster name on one broker; give this log "
                             "another (setting cluster, ECLOUD_CLUSTER)")


__all__ = ["BEAT_LISTEN", "STALE_BEAT", "Presence"]
