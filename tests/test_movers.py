"""The data movers (ecloud/effects/movers.py) against a local directory and a
real sshd (tests/sshd.py): fetch and push of files and directories, checksums,
refusals, failures that must leave nothing half-done, resumption, and a
200 MB fetch whose memory stays bounded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ecloud.effects.movers import (
    LocalDirMover,
    RsyncMover,
    StagingError,
    Transfer,
    mover_for,
)
from tests.brokers import wait_for


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
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SimpleNamespace:
    """A mover with its datastore directory (and the sshd, for "ssh")."""
    work = tmp_path / "work"
    work.mkdir()
    if request.param == "local":
        root = tmp_path / "store"
        root.mkdir()
        return SimpleNamespace(mover=mover_for(f"file://{root}"), root=root, work=work, server=None)
    server = request.getfixturevalue("sshd")
    mover = mover_for(server.address, key_file=server.key_file, timeout=5, retries=1)
    return SimpleNamespace(mover=mover, root=server.datastore, work=work, server=server)


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


def test_check_ssh(sshd) -> None:  # noqa: F811
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


def test_unreachable_datastore(sshd, tmp_path: Path) -> None:  # noqa: F811
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


def _fetch_in_child(sshd, dest: Path) -> tuple[dict, float, float]:  # noqa: F811
    """Fetch ``big`` in a fresh Python process: its result, its own peak RSS
    in MB (VmHWM: the worker's memory, what the mover holds), and the largest
    ru_maxrss among it and the rsync/ssh processes it ran (for information;
    on Linux that figure keeps the forking pytest's high-water mark)."""
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from ecloud.effects.movers import mover_for
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


def test_200mb_fetch_bounded_memory_and_speed(sshd, tmp_path: Path, capsys) -> None:  # noqa: F811
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


def test_broken_fetch_resumes(sshd, tmp_path: Path) -> None:  # noqa: F811
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


def test_push_broken_midway_keeps_the_old_result_and_resumes(sshd, tmp_path: Path) -> None:  # noqa: F811
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
