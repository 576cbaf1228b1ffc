"""Start the status page: parse the address, bind it (so a port taken or
refused is a clear error, and port 0 names the free port it got), settle the
host names it answers to, and run uvicorn on the bound socket - in the
foreground for ``ecloud web``, or in a thread beside the boss."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Iterable

import uvicorn

from ecloud.config import host_name, mask_password
from ecloud.errors import UserError
from ecloud.views.follower import Follower
from ecloud.web import DEFAULT_ADDRESS
from ecloud.web.app import LOOPBACK_NAMES, make_app

log = logging.getLogger("ecloud.web")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); a clear error else."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise UserError(f"web address {text!r}: give host:port, e.g. {DEFAULT_ADDRESS}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(f"web address {text!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise UserError(f"web address {text!r}: the port must be 0-65535")
    return host, port


def bind(text: str) -> socket.socket:
    host, port = parse_address(text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"web address {text!r}: cannot resolve {host!r} ({exc.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UserError(f"web address {text!r}: cannot listen there ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def is_loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


def is_wildcard(sock: socket.socket) -> bool:
    """Bound to every interface (0.0.0.0 or ::)."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_unspecified
    except ValueError:
        return False


def own_host_names() -> list[str]:
    """This machine's names: its host name and fully qualified name."""
    names = []
    for find in (socket.gethostname, socket.getfqdn):
        try:
            names.append(host_name(find()))
        except (OSError, ValueError):
            continue
    return names


def served_names(sock: socket.socket, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The ``Host`` names the page on ``sock`` answers to: the loopback
    names; the address it is bound to, or, bound to every interface, this
    machine's names (the address each request reaches is served too, see
    :class:`~ecloud.web.app.HostCheck`); and ``extra`` (the setting
    ``web_hosts``)."""
    names = list(LOOPBACK_NAMES)
    if is_wildcard(sock):
        names += own_host_names()
    else:
        names.append(sock.getsockname()[0])
    return tuple(dict.fromkeys(host_name(name) for name in (*names, *extra)))


class WebServer:
    """The page for the log at ``db_url``, on an already bound socket,
    answering to the names :func:`served_names` gives (``hosts``: the
    setting ``web_hosts``)."""

    def __init__(self, db_url: str, sock: socket.socket, hosts: Iterable[str] = ()) -> None:
        self.sock = sock
        self.url = url_of(sock)
        self.hosts = served_names(sock, hosts)
        self.follower = Follower(db_url, source=mask_password(db_url))
        app = make_app(self.follower, self.hosts, own_address=is_wildcard(sock))
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def serve(self) -> None:
        """Load the log, then serve until interrupted (the foreground)."""
        self.follower.start()
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.follower.stop()
            self.sock.close()

    def start(self) -> WebServer:
        """Load the log and serve from a thread (beside the boss)."""
        self.follower.start()
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="ecloud-web", daemon=True)
        self._thread.start()
        log.info("status page at %s", self.url)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.follower.stop()
        self.sock.close()
