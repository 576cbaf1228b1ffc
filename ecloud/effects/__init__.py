"""All of ecloud's I/O but the log's: messaging (MQTT), providers (where VMs come from), data (the movers)."""
