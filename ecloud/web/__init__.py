"""The status page (``ecloud web``, or served by the boss): see :mod:`.app`
for the routes and :mod:`.server` for how it is started."""
