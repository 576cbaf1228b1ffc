"""Test helpers: brokers, databases, the fake oned, clusters, ssh, workers."""
