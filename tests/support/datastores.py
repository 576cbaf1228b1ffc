"""A datastore as the tests set it up: marked, its address and id in the
context (what ``ecloud datastore set`` does)."""

from __future__ import annotations

from pathlib import Path

from ecloud.effects.data.movers import LocalDirMover
from ecloud.events import types as ev


def datastore_events(address: str, root: str | Path | None = None) -> list[ev.ContextSet]:
    """Mark the datastore's root directory on this machine (``root``, or the
    address itself for a local one) and the events that set it."""
    identity = LocalDirMover(root if root is not None else address).mark()
    return [ev.ContextSet("datastore_address", address), ev.ContextSet("datastore_id", identity)]
