"""The status page (``ecloud web``, or served by the boss): see :mod:`.app`
for the routes and :mod:`.server` for how it is started. (Kept light: the
CLI reads :data:`DEFAULT_ADDRESS` for its help without loading the server.)"""

DEFAULT_ADDRESS = "127.0.0.1:8470"
