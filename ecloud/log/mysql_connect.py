"""Connecting to MariaDB/MySQL: where a log lives (:class:`MySQLParams`),
opening a PyMySQL connection, and turning the driver's errors into ecloud's
one-line ones (a connection that is gone, access refused, no such database).
Used by the MariaDB store and by the tests that make and drop databases.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pymysql
from attrs import field, frozen

from ecloud.errors import EcloudError, MissingLogError, StoreError, UserError

DATABASE_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")

# Client/server error codes meaning "this connection is gone".
_LOST_CODES = {
    1053,  # ER_SERVER_SHUTDOWN
    1927,  # ER_CONNECTION_KILLED
    2006,  # CR_SERVER_GONE_ERROR
    2013,  # CR_SERVER_LOST
    2055,  # CR_SERVER_LOST_EXTENDED
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
}
_ACCESS_CODES = {1044, 1045, 1698}


@frozen
class MySQLParams:
    """Where a MariaDB log lives. ``password`` never appears in repr or messages."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str | None

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def display(self) -> str:
        """The URL without the password."""
        return f"mysql://{quote(self.user, safe='')}@{self.where}/{self.database or ''}"


def quote_ident(name: str) -> str:
    if not DATABASE_NAME.match(name):
        raise UserError(f"bad MariaDB database name {name!r} (letters, digits, _ $ - only)")
    return f"`{name}`"


def error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def describe_error(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        text = f"{args[1]} (error {args[0]})" if args[1] else f"error {args[0]}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and error_code(exc) in _LOST_CODES


#: seconds a new connection may take: a server that does not answer within it
#: (down, firewalled, a wrong address) is reported at once, not after the
#: 10 s PyMySQL waits by default; a live MariaDB answers in milliseconds
CONNECT_TIMEOUT = 3.0


def connect(
    params: MySQLParams,
    database: str | None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float | None = 120.0,
) -> pymysql.connections.Connection:
    """Open a PyMySQL connection or raise a one-line :class:`StoreError`
    (:class:`UserError` for a database that does not exist)."""
    try:
        conn = pymysql.connect(
            host=params.host,
            port=params.port,
            user=params.user,
            password=params.password,
            database=database,
            charset="utf8mb4",
            autocommit=False,
            connect_timeout=connect_timeout,
            # the handshake too must be done within connect_timeout: PyMySQL
            # reads the server's greeting under read_timeout, and something
            # that accepts the TCP connection but never speaks (a proxy, a
            # firewall, a hung server) would hold the command that long
            read_timeout=connect_timeout,
            write_timeout=connect_timeout,
            sql_mode="STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION",
        )
    except pymysql.err.Error as exc:
        raise connect_error(params, exc) from None
    # then the timeouts of queries; PyMySQL applies them from the next packet
    # on (pymysql.connections.Connection._read_packet, PyMySQL 1.x)
    conn._read_timeout = read_timeout
    conn._write_timeout = read_timeout
    return conn


def connect_error(params: MySQLParams, exc: BaseException) -> EcloudError:
    code = error_code(exc)
    if code == 1049:
        return MissingLogError(
            f"no event log at {params.display()}: database {params.database!r} does not exist"
        )
    if code in _ACCESS_CODES:
        return StoreError(
            f"MariaDB at {params.where} refused user {params.user!r}: {describe_error(exc)}"
        )
    text = describe_error(exc)
    if "timed out" in text:
        text += f" (no answer within {CONNECT_TIMEOUT:g}s: is the address right, is it up?)"
    return StoreError(f"cannot connect to MariaDB at {params.where}: {text}")
