"""A TCP proxy in front of MariaDB that can break one connection at COMMIT.

A COMMIT whose connection breaks leaves the client not knowing whether the
transaction landed. Killing a server at exactly that instant cannot be timed
from a test; this proxy makes both outcomes happen on demand, on a real
server and through the real client:

- ``"after"``: the COMMIT reaches the server; its answer (the transaction
  is durable by then) is thrown away and the connection dropped -
  committed, and the client cannot know;
- ``"before"``: the COMMIT never reaches the server and the connection is
  dropped - the server rolls back, and the client cannot know.

Only the next COMMIT after :meth:`cut_next_commit` is cut; every other byte,
including later connections, passes through.
"""

from __future__ import annotations

import socket
import threading

COMMIT = b"\x03COMMIT"  # COM_QUERY "COMMIT", as PyMySQL sends it


class _Pair:
    """One client connection and its upstream; ``swallow`` set: the
    server's next answer is dropped with the connection."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.swallow = threading.Event()

    def close(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._mode: str | None = None
        self._lock = threading.Lock()
        self.cuts = 0  # COMMITs cut so far
        self._pairs: list[_Pair] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_next_commit(self, mode: str) -> None:
        assert mode in ("after", "before")
        with self._lock:
            self._mode = mode

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for pair in self._pairs:
            pair.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            pair = _Pair(client, socket.create_connection(self.upstream))
            self._pairs.append(pair)
            threading.Thread(target=self._upstream, args=(pair,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(pair,), daemon=True).start()

    def _take_cut(self, data: bytes) -> str | None:
        if COMMIT not in data:
            return None
        with self._lock:
            mode, self._mode = self._mode, None
            if mode is not None:
                self.cuts += 1
            return mode

    def _upstream(self, pair: _Pair) -> None:
        try:
            while data := pair.client.recv(65536):
                mode = self._take_cut(data)
                if mode == "before":
                    break
                if mode == "after":
                    pair.swallow.set()  # before the server can answer
                pair.server.sendall(data)
        except OSError:
            pass
        if not pair.swallow.is_set():
            pair.close()

    def _downstream(self, pair: _Pair) -> None:
        try:
            while data := pair.server.recv(65536):
                if pair.swallow.is_set():
                    break
                pair.client.sendall(data)
        except OSError:
            pass
        pair.close()
