"""What the operator asks of a log: histories, why, lineage, verify, an attempt's output."""
