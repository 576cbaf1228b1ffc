"""Logs of a benchmark's own: a fresh SQLite file or a fresh MariaDB database,
gone afterwards whatever happens in between."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from ecloud.errors import UserError
from ecloud.log.url import open_store


@contextmanager
def fresh_log(db: str, name: str | None = None) -> Iterator[str]:
    """The URL of a new log: ``db`` is ``sqlite`` (a file in a temporary
    directory) or a MariaDB server URL (``mysql://user@host:port``), where a
    database ``name`` (default ``ecloud_bench_<random>``) is used and dropped."""
    if db.startswith("sqlite"):
        with tempfile.TemporaryDirectory(prefix="ecloud-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    url = f"{db.rstrip('/')}/{name or 'ecloud_bench_' + uuid.uuid4().hex[:8]}"
    try:
        yield url
    finally:
        try:
            store = open_store(url, create=False)
        except UserError:
            pass  # never created: nothing to drop
        else:
            store.drop()  # type: ignore[attr-defined]
