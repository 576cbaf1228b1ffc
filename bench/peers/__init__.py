"""Peer systems measured beside ecloud, on the same machine, in the same run.

- :mod:`bench.peers.env` - the peers' own virtual environment (Celery and its
  clients never enter the project's venv);
- :mod:`bench.peers.celery_peer` - Celery's end-to-end throughput over Redis
  or RabbitMQ (:func:`bench.peers.celery_peer.measure`);
- :mod:`bench.peers.celery_side` - the script that runs *inside* the peers'
  venv (the Celery app, its worker and its producer); never imported here.

The physical limit (how many ``true`` processes this machine spawns and reaps
per second) is :mod:`bench.spawn_limit`.
"""
