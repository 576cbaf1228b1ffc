"""The log's file: ecloud writes only to its own (an SQLite file of another
program is refused, untouched), makes it private (0600: it holds the tasks'
environments), and reads it where it may not write (a read-only filesystem)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ecloud.log.sqlite_store import APPLICATION_ID

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def ecloud(cwd: Path, *args: str, module: str = "ecloud.cli.main") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CONFIG": "",
                               "ECLOUD_DB": ""})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_sqlite_file_of_another_program_is_refused_and_left_untouched(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()
    before = digest(other)
    for args in (("push", str(EXAMPLES / "diamond.json")), ("status",), ("log",)):
        result = ecloud(tmp_path, *args, "--db", f"sqlite:///{other}")
        assert result.returncode == 2, result.stderr
        assert "is an SQLite database of another program" in result.stderr
        assert "tables: users" in result.stderr and "Traceback" not in result.stderr
    assert digest(other) == before
    assert not Path(f"{other}-wal").exists()  # not even its journal mode was changed


def test_a_new_log_is_ecloud_s_and_private(tmp_path: Path) -> None:
    result = ecloud(tmp_path, "push", str(EXAMPLES / "diamond.json"))
    assert result.returncode == 0, result.stderr
    db = tmp_path / "ecloud.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for extra in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()


def test_a_log_written_before_the_application_id_is_still_ecloud_s(tmp_path: Path) -> None:
    assert ecloud(tmp_path, "push", str(EXAMPLES / "diamond.json")).returncode == 0
    db = tmp_path / "ecloud.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA application_id = 0")
    conn.close()
    assert ecloud(tmp_path, "status").returncode == 0
    assert ecloud(tmp_path, "cancel", "d").returncode == 0  # written: it gets the id
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A tmpfs of our own, remounted read-only once filled (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a read-only filesystem: run it as root (CI does)")
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_read_only_commands_work_on_a_read_only_filesystem(tmp_path: Path,
                                                          read_only_folder: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = ecloud(work, "run", str(EXAMPLES / "diamond.json"), "--local", "2")
    assert result.returncode == 0, result.stderr
    (read_only_folder / "ecloud.db").write_bytes((work / "ecloud.db").read_bytes())
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_folder)], check=True)
    db = f"sqlite:///{read_only_folder / 'ecloud.db'}"
    status = ecloud(tmp_path, "status", "--json", "--db", db)
    assert status.returncode == 0, status.stderr
    assert '"succeeded":4' in status.stdout.replace(" ", "")
    for args in (("log", "--db", db), ("why", "d", "--db", db), ("graph", "--db", db)):
        result = ecloud(tmp_path, *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
    replay = ecloud(tmp_path, "--verify", "--db", db, module="ecloud.cli.replay")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    refused = ecloud(tmp_path, "cancel", "d", "--db", db)  # a write: refused, no traceback
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
