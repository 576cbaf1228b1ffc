"""The data movers (ecloud/effects/data/movers.py) against a local directory and a
real sshd (tests/support/sshd.py): fetch and push of files and directories, checksums,
refusals, failures that must leave nothing half-done, resumption, and a
200 MB fetch whose memory stays bounded."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ecloud.effects.data.movers import (
    LocalDirMover,
    RsyncMover,
    StagingError,
    Transfer,
    mover_for,
)
from tests.support.brokers import wait_for

MB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_sha(files: dict[str, bytes]) -> str:
    """The digest of a directory as the brief defines it, computed independently."""
    lines = sorted(f"{sha(data)}  {rel}\n" for rel, data in files.items())
    return sha("".join(lines).encode())


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def listing(root: Path) -> list[str]:
    """Every entry under ``root``, hidden ones included (temporaries must not stay)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def big_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` in chunks; their sha256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(size // MB):
            chunk = os.urandom(MB)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


TREE = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 300, "sub/deeper/c": b"",
        "z with space": b"zz"}


@pytest.fixture(params=["local", "ssh"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A mover with its datastore directory (and the sshd, for "ssh")."""
    work = tmp_path / "work"
    work.mkdir()
    if request.param == "local":
        root = tmp_path / "store"
        root.mkdir()
        with mover_for(f"file://{root}") as mover:
            yield SimpleNamespace(mover=mover, root=root, work=work, server=None)
        return
    server = request.getfixturevalue("sshd")
    with mover_for(server.address, key_file=server.key_file, timeout=5, retries=1) as mover:
        yield SimpleNamespace(mover=mover, root=server.datastore, work=work, server=server)


def test_addresses_pick_the_mover(tmp_path: Path) -> None:
    assert isinstance(mover_for(str(tmp_path)), LocalDirMover)
    assert isinstance(mover_for(f"file://{tmp_path}"), LocalDirMover)
    m = mover_for("ssh://alice@example.org:2222/data/store")
    assert isinstance(m, RsyncMover)
    assert (m.user, m.host, m.port, m.root, m.address) == (
        "alice", "example.org", 2222, "/data/store", "ssh://alice@example.org:2222/data/store")
    m = mover_for("bob@host.example:/srv/ds/")
    assert isinstance(m, RsyncMover) and (m.user, m.host, m.port, m.root) == (
        "bob", "host.example", None, "/srv/ds")
    for bad in ["relative/dir", "file://elsewhere/x", "ssh://host", "http://x/y"]:
        with pytest.raises(StagingError) as e:
            mover_for(bad)
        assert e.value.kind == "error"


def test_fetch_file(store: SimpleNamespace) -> None:
    data = os.urandom(3 * MB + 17)
    write_tree(store.root, {"inputs/data.bin": data})
    t = store.mover.fetch("inputs/data.bin", store.work / "in" / "d.bin")
    assert t.path == "inputs/data.bin" and t.sha256 == sha(data) and t.bytes == len(data)
    assert t.seconds > 0
    assert (store.work / "in" / "d.bin").read_bytes() == data
    assert listing(store.work) == ["in", "in/d.bin"]
    # the right expected checksum (in any case) is accepted
    t2 = store.mover.fetch("inputs/data.bin", store.work / "again", sha(data).upper())
    assert t2.sha256 == sha(data)


def test_fetch_directory(store: SimpleNamespace) -> None:
    write_tree(store.root / "ds", TREE)
    t = store.mover.fetch("ds", store.work / "tree", tree_sha(TREE))
    assert t == Transfer(path="ds", sha256=tree_sha(TREE), bytes=sum(map(len, TREE.values())),
                         seconds=t.seconds)
    assert read_tree(store.work / "tree") == TREE
    assert listing(store.work)[0] == "tree"  # no temporary next to it


def test_fetch_wrong_checksum_leaves_nothing(store: SimpleNamespace) -> None:
    write_tree(store.root, {"f": b"real content"})
    wrong = sha(b"something else")
    with pytest.raises(StagingError) as e:
        store.mover.fetch("f", store.work / "f", wrong)
    assert e.value.kind == "checksum"
    assert wrong in str(e.value) and sha(b"real content") in str(e.value)
    assert listing(store.work) == []


def test_fetch_missing(store: SimpleNamespace) -> None:
    with pytest.raises(StagingError) as e:
        store.mover.fetch("no/such/file", store.work / "x")
    assert e.value.kind == "missing" and "no/such/file" in e.value.reason
    assert listing(store.work) == []


def test_paths_escaping_the_root_are_refused(store: SimpleNamespace) -> None:
    write_tree(store.root.parent, {"outside": b"secret"})
    (store.work / "out").write_bytes(b"x")
    before = listing(store.root.parent)
    for bad in ["../outside", "a/../../outside", "/etc/passwd", "", ".", "a/.."]:
        with pytest.raises(StagingError) as e:
            store.mover.fetch(bad, store.work / "got")
        assert e.value.kind == "error", bad
        with pytest.raises(StagingError) as e:
            store.mover.push(store.work / "out", bad)
        assert e.value.kind == "error", bad
    assert not (store.work / "got").exists()
    assert listing(store.root.parent) == before


def test_push_file_and_directory(store: SimpleNamespace) -> None:
    data = os.urandom(MB + 3)
    (store.work / "result.bin").write_bytes(data)
    t = store.mover.push(store.work / "result.bin", "results/t1/result.bin")
    assert (t.path, t.sha256, t.bytes) == ("results/t1/result.bin", sha(data), len(data))
    assert (store.root / "results/t1/result.bin").read_bytes() == data
    write_tree(store.work / "outdir", TREE)
    t = store.mover.push(store.work / "outdir", "results/t1/outdir")
    assert (t.sha256, t.bytes) == (tree_sha(TREE), sum(map(len, TREE.values())))
    assert read_tree(store.root / "results/t1/outdir") == TREE
    # pushing again replaces the old result wholly (no file of the old one stays)
    new = {"only.txt": b"new"}
    write_tree(store.work / "outdir2", new)
    store.mover.push(store.work / "outdir2", "results/t1/outdir")
    (store.work / "small").write_bytes(b"v2")
    store.mover.push(store.work / "small", "results/t1/result.bin")
    assert read_tree(store.root / "results") == {
        "t1/result.bin": b"v2", "t1/outdir/only.txt": b"new"}
    assert listing(store.root) == ["results", "results/t1", "results/t1/outdir",
                                   "results/t1/outdir/only.txt", "results/t1/result.bin"]


def test_failed_push_keeps_the_old_result(store: SimpleNamespace) -> None:
    """A source directory whose last entry cannot be read (a dangling link):
    the push fails part way and the result already there is untouched."""
    old = {"keep.txt": b"old result"}
    write_tree(store.root / "res", old)
    write_tree(store.work / "out", {"a": os.urandom(MB), "b": b"fine"})
    (store.work / "out" / "zz-dangling").symlink_to(store.work / "nowhere")
    with pytest.raises(StagingError) as e:
        store.mover.push(store.work / "out", "res")
    assert e.value.kind == "error" and "zz-dangling" in e.value.reason
    assert read_tree(store.root / "res") == old
    assert listing(store.root) == ["res", "res/keep.txt"]
    with pytest.raises(StagingError) as e:
        store.mover.push(store.work / "absent", "res")
    assert e.value.kind == "missing"


def test_check_local(tmp_path: Path) -> None:
    assert LocalDirMover(tmp_path).check() == []
    assert listing(tmp_path) == []
    assert LocalDirMover(tmp_path / "nope").check() == [f"no such directory: {tmp_path / 'nope'}"]
    (tmp_path / "f").write_bytes(b"")
    assert LocalDirMover(tmp_path / "f").check() == [f"not a directory: {tmp_path / 'f'}"]
    # sysfs takes no new file, not even from root
    assert LocalDirMover("/sys").check() == ["no write access to /sys: Permission denied"]


# ---------------------------------------------------------------- ssh only


def test_check_ssh(sshd) -> None:
    good = mover_for(sshd.address, key_file=sshd.key_file, timeout=5)
    assert good.check() == []
    assert listing(sshd.datastore) == []
    (sshd.datastore / "plain").write_bytes(b"")
    assert mover_for(f"{sshd.address}/plain", key_file=sshd.key_file).check() == [
        f"not a directory: {sshd.datastore}/plain"]
    assert mover_for(f"{sshd.address}/gone", key_file=sshd.key_file).check() == [
        f"no such directory: {sshd.datastore}/gone"]
    sys_root = f"ssh://root@127.0.0.1:{sshd.port}/sys"  # sysfs: not writable even by root
    assert mover_for(sys_root, key_file=sshd.key_file).check() == [
        "no write access to /sys: Permission denied"]
    assert mover_for(sshd.address, timeout=5).check() == [  # no key
        f"cannot log in to root@127.0.0.1:{sshd.port}: Permission denied (publickey)."]
    sshd.stop()
    assert good.check() == [f"cannot reach root@127.0.0.1:{sshd.port}: Connection refused"]


def test_unreachable_datastore(sshd, tmp_path: Path) -> None:
    write_tree(sshd.datastore, {"f": b"x"})
    wrong_port = sshd.address.replace(f":{sshd.port}/", ":1/")
    sshd.stop()
    for address in (sshd.address, wrong_port):
        mover = mover_for(address, key_file=sshd.key_file, timeout=3, retries=1)
        started = time.monotonic()
        with pytest.raises(StagingError) as e:
            mover.fetch("f", tmp_path / "f")
        assert e.value.kind == "unreachable" and "Connection refused" in e.value.reason
        with pytest.raises(StagingError) as e:
            mover.push(sshd.datastore / "f", "g")
        assert e.value.kind == "unreachable"
        assert time.monotonic() - started < 2 * 3 * 2  # two calls, two attempts each, < timeout
    assert not (tmp_path / "f").exists()


def _fetch_in_child(sshd, dest: Path) -> tuple[dict, float, float]:
    """Fetch ``big`` in a fresh Python process: its result, its own peak RSS
    in MB (VmHWM: the worker's memory, what the mover holds), and the largest
    ru_maxrss among it and the rsync/ssh processes it ran (for information;
    on Linux that figure keeps the forking pytest's high-water mark)."""
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from ecloud.effects.data.movers import mover_for
        m = mover_for({sshd.address!r}, key_file={sshd.key_file!r}, timeout=10)
        t = m.fetch("big", Path({str(dest)!r}))
        # VmHWM belongs to this program's memory; ru_maxrss would keep the
        # high-water mark of the forked pytest process across exec
        status = Path("/proc/self/status").read_text().splitlines()
        own = int(next(l for l in status if l.startswith("VmHWM:")).split()[1]) / 1024
        print(json.dumps({{"sha256": t.sha256, "bytes": t.bytes, "seconds": t.seconds,
                           "own_rss_mb": own}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child and its children
    out = proc.stdout.read()
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, out
    result = json.loads(out)
    return result, result.pop("own_rss_mb"), usage.ru_maxrss / 1024


def test_200mb_fetch_bounded_memory_and_speed(sshd, tmp_path: Path, capsys) -> None:
    size = 200 * MB
    digest = big_file(sshd.datastore / "big", size)
    result, rss_mb, tree_mb = _fetch_in_child(sshd, tmp_path / "big")
    assert result == {"sha256": digest, "bytes": size, "seconds": result["seconds"]}
    assert rss_mb < 100, f"peak RSS of the fetching process {rss_mb:.0f} MB"
    (tmp_path / "big").unlink()
    started = time.monotonic()
    subprocess.run(["rsync", "-s", "-e", " ".join(sshd.ssh_command()), "--",
                    f"root@127.0.0.1:{sshd.datastore}/big", str(tmp_path / "plain")], check=True)
    plain = time.monotonic() - started
    assert (tmp_path / "plain").stat().st_size == size
    with capsys.disabled():
        print(f"\n[movers] 200 MB over ssh: mover {size / MB / result['seconds']:.0f} MB/s "
              f"(rsync + sha256, {result['seconds']:.2f} s), plain rsync "
              f"{size / MB / plain:.0f} MB/s ({plain:.2f} s); peak RSS of the fetching "
              f"process {rss_mb:.0f} MB (largest of it, rsync and ssh: {tree_mb:.0f} MB)")


def _partials(directory: Path) -> list[Path]:
    """Files under a hidden name (temporaries, partial files) below ``directory``."""
    return [p for p in directory.rglob("*") if p.is_file()
            and any(part.startswith(".") for part in p.relative_to(directory).parts)]


def test_broken_fetch_resumes(sshd, tmp_path: Path) -> None:
    size = 120 * MB
    digest = big_file(sshd.datastore / "big", size)
    mover = mover_for(sshd.address, key_file=sshd.key_file, timeout=3, retries=0)
    dest = tmp_path / "task" / "big"
    failure: list[BaseException] = []

    def fetch() -> None:
        try:
            mover.fetch("big", dest)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)

    thread = threading.Thread(target=fetch)
    thread.start()
    wait_for(lambda: any(p.stat().st_size > 10 * MB for p in _partials(dest.parent)),
             10, "the fetch to be under way")
    sshd.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], StagingError), failure
    assert failure[0].kind == "unreachable"
    assert not dest.exists()
    [partial] = _partials(dest.parent)  # what rsync got so far, kept for the next attempt
    got = partial.stat().st_size
    assert 0 < got < size
    with open(sshd.datastore / "big", "rb") as f, open(partial, "rb") as p:
        assert hashlib.sha256(p.read(MB)).digest() == hashlib.sha256(f.read(MB)).digest()
    sshd.start()
    t = mover.fetch("big", dest, digest)
    assert (t.sha256, t.bytes) == (digest, size)
    assert listing(dest.parent) == ["big"]  # no stray partial, no staging directory


def test_push_broken_midway_keeps_the_old_result_and_resumes(sshd, tmp_path: Path) -> None:
    old = b"the old result\n"
    write_tree(sshd.datastore, {"results/out.bin": old})
    digest = big_file(tmp_path / "out.bin", 120 * MB)
    mover = mover_for(sshd.address, key_file=sshd.key_file, timeout=3, retries=0)
    failure: list[BaseException] = []

    def push() -> None:
        try:
            mover.push(tmp_path / "out.bin", "results/out.bin")
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            failure.append(e)

    thread = threading.Thread(target=push)
    thread.start()
    results = sshd.datastore / "results"
    wait_for(lambda: any(p.stat().st_size > 10 * MB for p in _partials(results)),
             10, "the push to be under way")
    sshd.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert len(failure) == 1 and getattr(failure[0], "kind", None) == "unreachable", failure
    assert (results / "out.bin").read_bytes() == old
    sshd.start()
    t = mover.push(tmp_path / "out.bin", "results/out.bin")
    assert t.sha256 == digest
    assert listing(results) == ["out.bin"]
    with open(results / "out.bin", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest


# ---------------------------------------------------------------- the shared connection


def log_logins(sshd) -> None:
    """Restart the test's sshd so that it logs every login (tests/support/sshd.py
    runs it at LogLevel ERROR, which logs none)."""
    sshd.stop()
    sshd.config.write_text(sshd.config.read_text().replace("LogLevel ERROR", "LogLevel INFO"))
    sshd.start()


def logins(sshd) -> int:
    """How many ssh connections the test's sshd has accepted (see log_logins)."""
    return sshd.log.read_text().count("Accepted publickey for ")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def ssh_masters(directory: str) -> list[int]:
    """Pids of live ssh processes whose command line names ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0] == b"ssh" and any(directory.encode() in a for a in argv) and alive(int(entry)):
                found.append(int(entry))
    return found


def test_local_mover_is_a_context_manager(tmp_path: Path) -> None:
    with mover_for(str(tmp_path)) as mover:
        assert isinstance(mover, LocalDirMover)
        (tmp_path / "f").write_bytes(b"x")
        mover.fetch("f", tmp_path / "g")
    mover.close()  # again: nothing happens
    assert (tmp_path / "g").read_bytes() == b"x"


def test_one_connection_for_every_operation_of_a_mover(sshd, tmp_path: Path) -> None:
    log_logins(sshd)
    write_tree(sshd.datastore, {"in/a": b"a", **{f"in/t/{k}": v for k, v in TREE.items()}})
    write_tree(tmp_path / "out", TREE)
    (tmp_path / "result").write_bytes(b"result")
    with mover_for(sshd.address, key_file=sshd.key_file, timeout=5) as mover:
        assert mover.check() == []
        for n in range(3):
            mover.fetch("in/a", tmp_path / f"a{n}", sha(b"a"))
            mover.fetch("in/t", tmp_path / f"t{n}", tree_sha(TREE))
            mover.push(tmp_path / "result", f"results/{n}/result")
            mover.push(tmp_path / "out", f"results/{n}/out")
        pid = mover.master.pid
        assert pid is not None and alive(pid)
        assert os.getpgid(pid) == os.getpgid(0)  # killing the caller's group kills it
        assert logins(sshd) == 1  # 1 check + 6 fetches + 6 pushes of 4 commands each
    assert read_tree(sshd.datastore / "results") == {
        **{f"{n}/result": b"result" for n in range(3)},
        **{f"{n}/out/{k}": v for n in range(3) for k, v in TREE.items()}}
    # without the shared connection each command logs in on its own
    plain = logins(sshd)
    mover = mover_for(sshd.address, key_file=sshd.key_file, timeout=5)
    mover.master.close()
    mover.master.options = list  # type: ignore[method-assign]  # never a master
    mover.push(tmp_path / "result", "results/plain")
    assert logins(sshd) - plain == 4


def test_the_mover_survives_a_killed_master(sshd, tmp_path: Path) -> None:
    write_tree(sshd.datastore, {"f": b"data"})
    with mover_for(sshd.address, key_file=sshd.key_file, timeout=5, retries=0) as mover:
        mover.fetch("f", tmp_path / "f1")
        pid, socket = mover.master.pid, mover.master.socket
        assert pid is not None and socket is not None and os.path.exists(socket)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 5, "the master to die")
        assert os.path.exists(socket)  # SIGKILL leaves the socket behind
        t = mover.push(tmp_path / "f1", "copy")
        assert t.sha256 == sha(b"data") and (sshd.datastore / "copy").read_bytes() == b"data"
        # a new master took over, in the same directory, and answers there
        assert mover.master.pid not in (None, pid) and mover.master.socket == socket
        check = subprocess.run([*mover._ssh(), "-o", f"ControlPath={socket}", "-O", "check",
                                mover.target], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        assert f"(pid={mover.master.pid})" in check.stderr
        with pytest.raises(StagingError) as e:  # errors still say what they are
            mover.fetch("nope", tmp_path / "nope")
        assert e.value.kind == "missing"


def test_ssh_falls_back_to_its_own_connection_without_the_master(sshd, tmp_path: Path) -> None:
    """What the mover relies on in OpenSSH: with ``ControlMaster=no``, a
    socket whose master was killed, or no socket at all, makes ssh connect on
    its own (a stale one makes it complain on stderr; a missing one does not)."""
    with mover_for(sshd.address, key_file=sshd.key_file, timeout=5) as mover:
        shared = mover.master.options()
        assert shared and mover.master.pid is not None
        command = [*mover._ssh(), *shared, mover.target, "--", "echo ok"]
        assert subprocess.run(command, capture_output=True, text=True, check=False).stdout == "ok\n"
        os.kill(mover.master.pid, signal.SIGKILL)
        wait_for(lambda: mover.master.pid is None, 5, "the master to die")
        stale = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert (stale.returncode, stale.stdout) == (0, "ok\n")
        assert "Control socket connect" in stale.stderr
        os.unlink(mover.master.socket)
        gone = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert (gone.returncode, gone.stdout, gone.stderr) == (0, "ok\n", "")


def test_a_master_that_cannot_start_is_no_error(sshd, tmp_path: Path) -> None:
    """While the datastore is down the master cannot start and commands fail
    as before; once it is back the mover works, and shares a connection again."""
    write_tree(sshd.datastore, {"f": b"data"})
    sshd.stop()
    with mover_for(sshd.address, key_file=sshd.key_file, timeout=3, retries=0) as mover:
        with pytest.raises(StagingError) as e:
            mover.fetch("f", tmp_path / "f")
        assert e.value.kind == "unreachable" and "Connection refused" in e.value.reason
        assert mover.master.pid is None
        sshd.start()
        mover.fetch("f", tmp_path / "f")  # on its own connection: the last start failed
        assert (tmp_path / "f").read_bytes() == b"data"
        mover.push(tmp_path / "f", "g")
        assert mover.master.pid is not None  # a command got through, so it was tried again
    # no key: the master's login is refused, and the command says so
    with mover_for(sshd.address, timeout=5) as mover:
        assert mover.check() == [
            f"cannot log in to root@127.0.0.1:{sshd.port}: Permission denied (publickey)."]


def test_close_leaves_no_master_and_no_directory(sshd, tmp_path: Path) -> None:
    write_tree(sshd.datastore, {"f": b"data"})
    with mover_for(sshd.address, key_file=sshd.key_file, timeout=5) as mover:
        mover.fetch("f", tmp_path / "f")
        pid, directory = mover.master.pid, str(Path(mover.master.socket).parent)
        assert pid is not None and ssh_masters(directory) == [pid]
        assert os.stat(directory).st_mode & 0o777 == 0o700
        assert len(mover.master.socket) < 100
    assert not alive(pid) and ssh_masters(directory) == []
    assert not os.path.exists(directory)
    mover.close()  # again: nothing to do
    # a closed mover can still be used: it makes a new connection
    mover.fetch("f", tmp_path / "again")
    pid2 = mover.master.pid
    assert pid2 is not None and pid2 != pid
    directory = str(Path(mover.master.socket).parent)
    # a forgotten mover's master goes with it
    del mover
    gc.collect()
    assert not alive(pid2) and not os.path.exists(directory)


def test_a_forgotten_master_stops_when_python_exits(sshd, tmp_path: Path) -> None:
    write_tree(sshd.datastore, {"f": b"data"})
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from ecloud.effects.data.movers import mover_for
        MOVER = mover_for({sshd.address!r}, key_file={sshd.key_file!r}, timeout=5)
        MOVER.fetch("f", Path({str(tmp_path / "f")!r}))
        print(json.dumps([MOVER.master.pid, MOVER.master.socket]), flush=True)
    """)  # MOVER is a global: alive until the interpreter exits
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    pid, socket = json.loads(out)
    assert pid is not None
    wait_for(lambda: not alive(pid), 5, "the master to stop")
    assert not os.path.exists(Path(socket).parent)


# ---------------------------------------------------------------- identity


def identified(store: SimpleNamespace, identity: str):
    """The fixture's mover, for the same datastore, checking ``identity``."""
    if store.server is None:
        return mover_for(f"file://{store.root}", identity=identity)
    return mover_for(store.server.address, key_file=store.server.key_file, timeout=5, retries=1,
                     identity=identity)


def test_mark_makes_the_marker_once_and_never_the_root(store: SimpleNamespace) -> None:
    first = store.mover.mark()
    assert first == store.mover.mark()  # kept, not made again
    assert (store.root / ".ecloud-datastore").read_text().strip() == first
    assert listing(store.root) == [".ecloud-datastore"]  # no temporary left
    for child in store.root.iterdir():
        child.unlink()
    store.root.rmdir()
    with pytest.raises(StagingError) as e:
        store.mover.mark()
    assert e.value.kind == "missing" and "no such directory" in e.value.reason
    assert not store.root.exists()


def test_a_push_into_a_root_that_went_away_is_refused_and_creates_nothing(
        store: SimpleNamespace) -> None:
    """Seen: the datastore unmounted (or renamed) mid-run, the push made its
    root again with mkdir -p and the task succeeded, its outputs on the disk
    beneath. Now the root must hold the datastore's marker."""
    identity = store.mover.mark()
    (store.work / "out.txt").write_bytes(b"result")
    with identified(store, identity) as mover:
        mover.push(store.work / "out.txt", "results/t/out.txt")  # the root is there: fine
        moved = store.root.with_name(store.root.name + "-unmounted")
        store.root.rename(moved)
        try:
            with pytest.raises(StagingError) as e:
                mover.push(store.work / "out.txt", "results/t/again.txt")
            assert e.value.kind == "error" and "datastore root gone" in e.value.reason
            assert "does not exist" in e.value.reason
            assert not store.root.exists()  # nothing was made in its place
            store.root.mkdir()  # an empty mount point, say
            with pytest.raises(StagingError) as e:
                mover.push(store.work / "out.txt", "results/t/again.txt")
            assert "datastore root gone" in e.value.reason and "marker" in e.value.reason
            assert listing(store.root) == []
            (store.root / ".ecloud-datastore").write_text("0" * 32 + "\n")  # another datastore
            with pytest.raises(StagingError) as e:
                mover.push(store.work / "out.txt", "results/t/again.txt")
            assert "is another datastore" in e.value.reason
            assert listing(store.root) == [".ecloud-datastore"]
            assert mover.check() and "datastore root gone" in mover.check()[0]
        finally:
            for child in store.root.iterdir():
                child.unlink()
            store.root.rmdir()
            moved.rename(store.root)
        mover.push(store.work / "out.txt", "results/t/again.txt")  # back: fine again
    assert (store.root / "results/t/again.txt").read_bytes() == b"result"


def test_a_local_push_is_read_back_before_it_takes_its_name(tmp_path: Path, monkeypatch) -> None:
    """What lands on the datastore is hashed where it lies: a copy that does
    not read back as what was sent never takes the final name."""
    import ecloud.effects.data.movers as movers

    root = tmp_path / "store"
    root.mkdir()
    mover = LocalDirMover(root)
    identity = mover.mark()
    (tmp_path / "out.bin").write_bytes(b"x" * 1000)
    real_copy = movers.copy_path

    def copy_that_loses_a_byte(src: Path, dst: Path):
        digest = real_copy(src, dst)
        with open(dst, "r+b") as f:  # the disk kept less than it was given
            f.truncate(999)
        return digest

    monkeypatch.setattr(movers, "copy_path", copy_that_loses_a_byte)
    with pytest.raises(StagingError) as e:
        LocalDirMover(root, identity=identity).push(tmp_path / "out.bin", "r/out.bin")
    assert e.value.kind == "checksum" and "999 bytes" in e.value.reason
    assert listing(root) == [".ecloud-datastore"]  # nor the folder made for it
