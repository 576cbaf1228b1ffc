"""The boss: its loop (one transaction, one fold, one round of effects per turn), the
lease that keeps one boss per log, the edge that turns MQTT messages and hook callbacks into
events, and how workers find it."""
