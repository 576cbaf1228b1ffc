"""An appender process for tests/test_store_concurrency.py (not a test module).

    python tests/support/appender.py URL APPENDER_ID BATCHES SEED

Opens the log (which must exist), prints ``ready``, waits for a line on stdin
(the start signal, so all appenders begin together), then appends BATCHES
batches of 1-20 ``WorkerHeartbeat`` events with ``worker_id="appender-<id>"``
and ``msg_id="<id>:<counter>"`` (counter 0, 1, 2, ... across batches), and
prints ``done <events appended>``.
"""

from __future__ import annotations

import random
import sys


def main() -> int:
    url, ident, batches, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    from ecloud.events.types import WorkerHeartbeat
    from ecloud.log.url import open_store_url

    rng = random.Random(seed)
    store = open_store_url(url, create=False)
    print("ready", flush=True)
    sys.stdin.readline()
    counter = 0
    worker = f"appender-{ident}"
    try:
        for _ in range(batches):
            n = rng.randint(1, 20)
            store.append(
                [WorkerHeartbeat(worker_id=worker, msg_id=f"{ident}:{counter + i}") for i in range(n)]
            )
            counter += n
    finally:
        store.close()
    print(f"done {counter}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
