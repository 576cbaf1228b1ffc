"""MQTT: the connection, the boss's outbox, the brokers ecloud starts."""
