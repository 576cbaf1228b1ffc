"""The status page answers only to the names it serves (the ``Host``
header): a web site whose name resolves to 127.0.0.1 (DNS rebinding) must
not be able to read the page, its API or /metrics from the operator's
browser. Requests are written by hand on a socket, so the Host header is
exactly the one under test."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ecloud.config import load_config
from ecloud.errors import ConfigError
from ecloud.events import types as ev
from ecloud.events.types import TaskSpec
from ecloud.log.url import open_store
from ecloud.web.server import WebServer, bind
from tests.support.brokers import wait_for
from tests.support.e2e import ROOT
from tests.support.web_helpers import Web

#: what the log holds: none of it may reach a refused request
TASK = "leaky-sim-042"
STDERR = "s3cret mesh file missing"
#: every route of the app (the event stream only where it is refused: it never ends)
ROUTES = ("/", "/api/page", "/api/page?seq=1", "/api/graph", "/api/tasks",
          "/api/tasks?state=failed&q=leaky*", f"/api/task/{TASK}", f"/api/task/{TASK}?seq=4",
          "/api/seek?time=0", "/api/seek?failure=next&from=0", "/metrics", "/healthz",
          "/static/index.html", "/static/app.js")
MISSING = object()


def fetch(port: int, path: str = "/", host: object = MISSING, version: str = "HTTP/1.1",
          address: str = "127.0.0.1") -> tuple[int, dict[str, str], str]:
    """One GET with exactly this Host header (``MISSING``: none at all), as
    (status, headers, body)."""
    lines = [f"GET {path} {version}"]
    if host is not MISSING:
        lines.append(f"Host: {host}")
    lines += ["Connection: close", "", ""]
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body.decode("utf-8", "replace")


def a_log(folder: Path) -> str:
    """A log with a task that failed with something on stderr."""
    db = f"sqlite:///{folder}/host.db"
    with open_store(db) as store:
        store.append([ev.WorkerAnnounced("w1", "node-1", 1, 1, "inc", msg_id="m1"),
                      ev.TasksSubmitted("b", (TaskSpec(TASK, "false"),)),
                      ev.TaskDispatched(TASK, 1, "w1"),
                      ev.TaskFinished(TASK, 1, "w1", 3, 1.0, stderr_tail=STDERR, msg_id="m2")])
    return db


def serve(db: str, address: str = "127.0.0.1:0") -> WebServer:
    server = WebServer(db, bind(address)).start()
    wait_for(lambda: server.follower.state.seq == 4, 30, "the follower to catch up")
    return server


def port_of(server_or_url) -> int:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    return int(re.search(r":(\d+)/$", url).group(1))


def assert_refused(port: int, host: object, path: str = "/", version: str = "HTTP/1.1",
                   address: str = "127.0.0.1") -> str:
    status, headers, body = fetch(port, path, host, version, address)
    assert status == 421, (host, path, status, body[:200])
    assert headers["content-type"].startswith("text/plain"), headers
    for leak in (TASK, "s3cret", "node-1", "ecloud_tasks", "# HELP", '"seq"', '"ok"', "<"):
        assert leak not in body, (host, path, body)
    assert "web_hosts" in body and "ECLOUD_WEB_HOSTS" in body, body
    return body


@pytest.fixture
def server(tmp_path: Path):
    server = serve(a_log(tmp_path))
    yield server
    server.stop()


def test_the_loopback_names_get_the_page_and_metrics_and_a_foreign_name_gets_nothing(
        server) -> None:
    port = port_of(server)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"LocalHost:{port}",
                 f"[::1]:{port}"):
        for path in ROUTES:
            status, _, body = fetch(port, path, host)
            assert status == 200, (host, path, status, body[:200])
        assert TASK in fetch(port, "/api/graph", host)[2]
        assert STDERR in fetch(port, "/api/page", host)[2]
        assert STDERR in fetch(port, f"/api/task/{TASK}", host)[2]
        assert TASK in fetch(port, "/api/tasks?state=failed", host)[2]
        assert fetch(port, "/api/task/nope", host)[0] == 404
        assert "ecloud_tasks" in fetch(port, "/metrics", host)[2]
        assert "<html" in fetch(port, "/", host)[2].lower()
    for path in (*ROUTES, "/api/stream", "/api/task/nope", "/nowhere"):
        assert_refused(port, f"evil.example:{port}", path)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "EVIL.example:{port}",
                                  "localhost.evil.example:{port}", "127.0.0.1.nip.io:{port}",
                                  "evil.example:{port}@127.0.0.1", "", " ", "[::1",
                                  "127.0.0.1:{port}:{port}"])
def test_a_foreign_or_malformed_host_is_refused_on_every_route(server, host: str) -> None:
    port = port_of(server)
    for path in (*ROUTES, "/api/stream"):
        body = assert_refused(port, host.format(port=port), path)
    # it says which names are served, and not whatever it was sent
    assert "localhost" not in body and "127.0.0.1" not in body  # names are not told
    assert "evil" not in body and "nip.io" not in body


def test_a_request_without_a_host_is_refused(server) -> None:
    port = port_of(server)
    for path in ROUTES:  # HTTP/1.0 may leave Host out
        assert_refused(port, MISSING, path, version="HTTP/1.0")
    status, _, body = fetch(port, "/api/page", MISSING)  # HTTP/1.1 must not
    assert status in (400, 421) and TASK not in body and "s3cret" not in body
    status, _, body = fetch(port, "/api/page", f"127.0.0.1:{port}", version="HTTP/1.0")
    assert status == 200 and STDERR in body


def test_the_address_bound_to_is_served_and_the_loopback_names_still_are(tmp_path: Path) -> None:
    """Bound to an address other than 127.0.0.1 (here the loopback
    127.0.0.2), that address is a name the page answers to."""
    try:
        probe = bind("127.0.0.2:0")
    except Exception:  # noqa: BLE001 - not every system routes all of 127/8
        pytest.skip("127.0.0.2 cannot be bound here")
    probe.close()
    server = serve(a_log(tmp_path), "127.0.0.2:0")
    try:
        port = port_of(server)
        for host in (f"127.0.0.2:{port}", "127.0.0.2", f"localhost:{port}"):
            assert fetch(port, "/api/graph", host, address="127.0.0.2")[0] == 200, host
        body = assert_refused(port, f"evil.example:{port}", address="127.0.0.2")
        assert "127.0.0.2" not in body
    finally:
        server.stop()


def _own_address() -> str | None:
    """A non-loopback address of this machine (the one its default route
    leaves from), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_bound_to_every_interface_it_answers_to_the_machine_s_names_and_addresses(
        tmp_path: Path) -> None:
    """On 0.0.0.0 there is no one address to compare with: the machine's
    host names are served, and every request may name the address its
    connection reached (that is the page's own origin, never a rebinding
    site's name)."""
    server = serve(a_log(tmp_path), "0.0.0.0:0")
    try:
        port = port_of(server)
        hostname = socket.gethostname()
        for host in (f"{hostname}:{port}", hostname.upper(), f"127.0.0.1:{port}",
                     f"localhost:{port}"):
            assert fetch(port, "/api/graph", host)[0] == 200, host
        # 0.0.0.0 is not a name anything is reached by
        for host in (f"evil.example:{port}", f"0.0.0.0:{port}", f"{hostname}.evil.example"):
            assert_refused(port, host, "/api/page")
        mine = _own_address()
        if mine is not None:
            assert fetch(port, "/api/graph", f"{mine}:{port}", address=mine)[0] == 200
            # an address of the machine counts only for a connection that reached it
            assert_refused(port, f"{mine}:{port}", "/api/page", address="127.0.0.1")
    finally:
        server.stop()


def test_a_name_added_with_web_hosts_is_served_by_ecloud_web(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = a_log(tmp_path)
    monkeypatch.setenv("ECLOUD_WEB_HOSTS", "status.example.org, Ops.Example")
    web = Web(tmp_path, db)
    try:
        port = port_of(web.url)
        wait_for(lambda: STDERR in fetch(port, "/api/page", f"127.0.0.1:{port}")[2], 30,
                 "the page to show the log")
        for host in (f"status.example.org:{port}", "ops.example", f"OPS.EXAMPLE.:{port}",
                     f"localhost:{port}"):
            status, _, body = fetch(port, "/api/page", host)
            assert status == 200 and STDERR in body, (host, status)
            assert fetch(port, "/metrics", host)[0] == 200
        body = assert_refused(port, f"evil.example:{port}", "/api/page")
        assert "status.example.org" not in body and "ops.example" not in body
        assert_refused(port, f"example.org:{port}", "/metrics")
    finally:
        web.stop()


def test_the_boss_serves_the_names_of_web_hosts(tmp_path: Path, shared_mqtt_url: str) -> None:
    db = f"sqlite:///{tmp_path}/boss.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CLUSTER": f"h{os.getpid()}",
           "ECLOUD_CONFIG": "", "ECLOUD_DB": "", "ECLOUD_WEB_HOSTS": "boss.example"}
    boss = subprocess.Popen([sys.executable, "-m", "ecloud.cli.boss", "--broker", shared_mqtt_url,
                             "--db", db, "--web", "127.0.0.1:0"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def url() -> str | None:
            found = re.search(r"status page at (http://127\.0\.0\.1:\d+/)", boss.stderr.readline())
            return found.group(1) if found else None

        port = port_of(wait_for(url, 60, "the boss to say where its page is"))
        wait_for(lambda: fetch(port, "/healthz", "boss.example")[0] == 200, 30,
                 "the boss's page to answer to boss.example")
        assert fetch(port, "/metrics", f"boss.example:{port}")[0] == 200
        body = assert_refused(port, f"evil.example:{port}", "/metrics")
        assert "boss.example" not in body
    finally:
        boss.send_signal(signal.SIGTERM)
        assert boss.wait(60) == 0


@pytest.mark.parametrize(("given", "expected"), [
    ("status.example.org", ("status.example.org",)),
    (" A.example , b.example,, ", ("a.example", "b.example")),
    ("10.0.0.5,[fe80::1],FE80::1", ("10.0.0.5", "fe80::1")),
    ("status.example.org.", ("status.example.org",)),
])
def test_web_hosts_is_a_comma_separated_list_of_names(home_env, given, expected) -> None:
    config = load_config({}, {**home_env, "ECLOUD_WEB_HOSTS": given})
    assert config.web_hosts == expected
    assert ("web_hosts", ", ".join(expected), "env ECLOUD_WEB_HOSTS") in config.describe()


def test_web_hosts_in_the_config_file_is_a_list_or_a_string(tmp_path: Path, home_env) -> None:
    path = tmp_path / "ecloud.toml"
    path.write_text('web_hosts = ["Status.example.org", "10.1.2.3"]\n')
    config = load_config({"config": str(path)}, home_env)
    assert config.web_hosts == ("status.example.org", "10.1.2.3")
    path.write_text('web_hosts = "a.example, b.example"\n')
    assert load_config({"config": str(path)}, home_env).web_hosts == ("a.example", "b.example")
    assert load_config({}, home_env).web_hosts is None


@pytest.mark.parametrize(("given", "words"), [
    ("status.example.org:8470", "without a port"),
    ("*.example.org", "wildcard"),
    ("*", "wildcard"),
    ("two words", "not a host name"),
    ("http://status.example.org/", "not a host name"),
    (",", "at least one"),
])
def test_web_hosts_refuses_what_is_not_a_name(home_env, given, words) -> None:
    with pytest.raises(ConfigError, match="ECLOUD_WEB_HOSTS") as caught:
        load_config({}, {**home_env, "ECLOUD_WEB_HOSTS": given})
    assert words in str(caught.value)


@pytest.fixture
def home_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment with an empty home, in an empty folder: no config file is found."""
    for folder in ("home", "work"):
        (tmp_path / folder).mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "work")
    return {"HOME": str(tmp_path / "home")}
