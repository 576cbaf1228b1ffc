"""The event types and their codec: pure, nothing here opens a file or a socket."""
