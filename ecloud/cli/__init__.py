"""Every command: ecloud, ecloud-boss, ecloud-replay; their output and exit statuses."""
