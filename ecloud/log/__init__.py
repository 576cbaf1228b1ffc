"""The event log's stores (SQLite, MariaDB, memory), their URLs and locks, and
rebuilding a state from a log and its snapshots: the I/O side of the log."""
