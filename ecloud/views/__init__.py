"""Read-only views of the log for people and monitoring: the DAG as a
picture, the status page's data, Prometheus metrics, the cost ledger.

Like the reducers they read the folded state (or the events) and do no I/O
of their own, except :mod:`.follower`, which tails a log for the web page.
"""
