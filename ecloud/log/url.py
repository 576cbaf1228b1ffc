"""Event log URLs -> :class:`~ecloud.log.store.LogStore` backends.

Accepted forms::

    sqlite:///relative/path.db              relative to the current directory
    sqlite:////absolute/path.db
    mysql://user:password@host:3306/database   (port defaults to 3306; the
                                                password may be empty or absent;
                                                user and password are
                                                percent-decoded: %40 for @ ...)
    memory://                               a new, empty log in this process

``mariadb://`` is accepted as a synonym of ``mysql://``. Anything else is a
:class:`~ecloud.errors.UserError` listing these forms. Passwords never appear
in messages or in a store's ``url``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ecloud.errors import UserError

if TYPE_CHECKING:
    from ecloud.log.store import LogStore

ACCEPTED = (
    "accepted event log URLs: sqlite:///relative/path.db, sqlite:////absolute/path.db,"
    " mysql://user:password@host:3306/database, memory://"
)

_CREDENTIALS = re.compile(r"(://[^/@:]*):[^/@]*@")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1:***@", url)


def _bad(url: str, why: str) -> UserError:
    return UserError(f"bad event log URL {redact(url)!r}: {why}; {ACCEPTED}")


def parse_sqlite_url(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise _bad(url, "an SQLite URL starts with sqlite:/// (three slashes)")
    path = url[len(prefix) :]
    if not path or path.endswith("/"):
        raise _bad(url, "no file name after sqlite:///")
    if "?" in path or "#" in path:
        raise _bad(url, "SQLite URLs take no query string")
    return path


def parse_mysql_url(url: str, *, require_database: bool = True):
    """The :class:`~ecloud.log.mysql_store.MySQLParams` of a ``mysql://`` URL."""
    from ecloud.log.mysql_connect import DATABASE_NAME, MySQLParams

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad(url, f"cannot parse it ({exc})") from None
    if parts.scheme.lower() not in ("mysql", "mariadb"):
        raise _bad(url, "not a mysql:// URL")
    if parts.query or parts.fragment:
        raise _bad(url, "MySQL URLs take no query string or fragment")
    if not parts.hostname:
        raise _bad(url, "no host")
    if parts.username is None or not unquote(parts.username):
        raise _bad(url, "no user (mysql://user:password@host:port/database)")
    database = parts.path[1:] if parts.path.startswith("/") else parts.path
    database = unquote(database)
    if database.endswith("/"):
        database = database[:-1]
    if not database:
        if require_database:
            raise _bad(url, "no database name after host:port/")
        database = None
    elif not DATABASE_NAME.match(database):
        raise _bad(url, f"bad database name {database!r} (letters, digits, _ $ - only)")
    return MySQLParams(
        host=parts.hostname,
        port=port or 3306,
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        database=database,
    )


def open_store_url(url: str, create: bool = True, read_only: bool = False) -> LogStore:
    """Open the event log at ``url``; see the module docstring.

    With ``create`` the log (SQLite file, MariaDB database, tables) is made if
    missing; without it a missing log is a :class:`UserError`. A server that
    cannot be reached or refuses the login is a
    :class:`~ecloud.errors.StoreError` naming host:port. ``read_only``: the
    caller only reads (an SQLite file is opened so; MariaDB is read as usual).
    """
    if not isinstance(url, str) or not url.strip():
        raise UserError(f"no event log URL given; {ACCEPTED}")
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from ecloud.log.sqlite_store import SQLiteStore

        return SQLiteStore(parse_sqlite_url(url), create=create, url=url, read_only=read_only)
    if scheme in ("mysql", "mariadb"):
        from ecloud.log.mysql_store import MySQLStore

        return MySQLStore(parse_mysql_url(url), create=create)
    if scheme == "memory":
        if url.lower() != "memory://":
            raise _bad(url, "memory:// takes nothing after the slashes")
        from ecloud.log.memory_store import MemoryStore

        return MemoryStore()
    raise _bad(url, "unknown scheme" if scheme else "not a URL")


def open_store(url: str, *, create: bool = True, read_only: bool = False) -> LogStore:
    """Open the log named by ``url`` (see :mod:`ecloud.log.store`).

    ``create`` makes the schema (and, for SQLite, the file) if missing; with
    ``create=False`` a missing log is a :class:`~ecloud.errors.UserError`.
    Bad URLs raise :class:`~ecloud.errors.UserError` naming the accepted forms.
    """
    return open_store_url(url, create=create, read_only=read_only)
