"""Limits at the door (ecloud/limits.py): every input bound is checked at
push, with exit status 2 and a message naming the file, the task and the
field; JSON is strict (UTF-8, no key twice); datastore paths cannot climb.
The README's table is generated from the code's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ecloud import limits
from ecloud.errors import ValidationError
from ecloud.taskfiles.taskfile import parse_tasks

ROOT = Path(__file__).resolve().parent.parent


def refusal(data) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_tasks(data, source="f.json")
    return info.value.problems


def t(tid: str = "a", **kw) -> dict:
    return {"id": tid, "command": "true", **kw}


def test_the_readme_shows_the_limits_of_the_code() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- limits:[^\n]*-->\n(.*?)\n<!-- /limits -->", text, re.S)
    assert block, "README.md lacks the generated limits table"
    assert block.group(1) == limits.markdown()


@pytest.mark.parametrize("task, problem", [
    (t(command="x" * (limits.COMMAND_BYTES + 1)),
     f"command: {limits.COMMAND_BYTES + 1:,} bytes, at most {limits.COMMAND_BYTES:,} allowed"),
    (t(command="é" * (limits.COMMAND_BYTES // 2 + 1)),  # 2 bytes each in UTF-8
     f"command: {2 * (limits.COMMAND_BYTES // 2 + 1):,} bytes, at most {limits.COMMAND_BYTES:,} allowed"),
    (t(command=["sh", "-c", "y" * (limits.COMMAND_BYTES + 1)]),
     f"command[2]: {limits.COMMAND_BYTES + 1:,} bytes, at most {limits.COMMAND_BYTES:,} allowed"),
    (t(command=["true"] * (limits.COMMAND_ARGS + 1)),
     f"command: {limits.COMMAND_ARGS + 1:,} arguments, at most {limits.COMMAND_ARGS:,} allowed"),
    (t(command="echo a\0b"), "command: must not contain a NUL character"),
    (t(command=["echo", "a\0b"]), "command[1]: must not contain a NUL character"),
    (t(env={"A": "x\0y"}), 'env["A"]: must not contain a NUL character'),
    (t(env={"A": "v" * (limits.ENV_VALUE_BYTES + 1)}),
     f'env["A"]: {limits.ENV_VALUE_BYTES + 1:,} bytes, at most {limits.ENV_VALUE_BYTES:,} allowed'),
    (t(env={"A=B": "x"}), 'env: "A=B" is not a valid variable name'),
    (t(env={"N" * 256: "x"}), "is not a valid variable name (1-255 letters"),
    (t(env={f"V{i}": "x" for i in range(limits.ENV_VARS + 1)}),
     f"env: {limits.ENV_VARS + 1:,} variables, at most {limits.ENV_VARS:,} allowed"),
    (t(slots=limits.SLOTS + 1), f"slots: expected an integer from 1 to {limits.SLOTS:,}"),
    (t(retries=limits.RETRIES + 1), f"retries: expected an integer from 0 to {limits.RETRIES:,}"),
    (t(priority=2 * limits.PRIORITY), "priority: expected an integer from -1,000,000,000"),
    (t(timeout=limits.TIMEOUT * 2), "timeout: expected a number of seconds > 0 and at most"),
    (t(retry_backoff=1e9), "retry_backoff: expected a number of seconds from 0 to 86,400"),
    (t(depends_on=[f"d{i}" for i in range(limits.LIST_ENTRIES + 1)]),
     f"depends_on: {limits.LIST_ENTRIES + 1:,} entries, at most {limits.LIST_ENTRIES:,} allowed"),
    (t(outputs=["o" * (limits.PATH_BYTES + 1)]),
     f"outputs[0]: is {limits.PATH_BYTES + 1:,} bytes long, at most {limits.PATH_BYTES:,} allowed"),
    (t(inputs=["../../etc/hostname"]), "inputs[0]: \"../../etc/hostname\" must not contain '..'"),
    (t(inputs=["/etc/hostname"]), 'inputs[0]: "/etc/hostname" is absolute'),
    (t(inputs=["raw/sub/x/.."]), "inputs[0]: \"raw/sub/x/..\" must not contain '..'"),
    (t(inputs=["raw/./x"]), 'inputs[0]: "raw/./x" is not normalized'),
    (t(inputs=[{"path": "a\0b"}]), "inputs[0].path: must not contain a NUL character"),
    (t(outputs=["out/"]), 'outputs[0]: "out/" is not normalized'),
    (t("bad\0id"), "contains a NUL character"),
    (t(env={f"V{i}": "v" * 2000 for i in range(600)}),
     "the task is 1,"),  # each value fits, the task does not
])
def test_a_task_over_a_limit_is_refused_naming_task_and_field(task, problem) -> None:
    found = refusal([task])
    assert len(found) == 1 and problem in found[0], found
    assert found[0].startswith("tasks[0]")  # and the id, when it is one


def test_a_task_at_every_limit_is_accepted() -> None:
    (spec,) = parse_tasks([t(command="x" * limits.COMMAND_BYTES, slots=limits.SLOTS,
                             retries=limits.RETRIES, priority=-limits.PRIORITY,
                             timeout=limits.TIMEOUT, retry_backoff=limits.RETRY_BACKOFF,
                             env={"N" * limits.ENV_NAME_LENGTH: "v" * limits.ENV_VALUE_BYTES},
                             inputs=["i" * limits.DATASTORE_PATH_BYTES],
                             outputs=["o" * (limits.DATASTORE_PATH_BYTES - len("results/a/"))])])
    assert len(spec.command) == limits.COMMAND_BYTES
    # and a task at those limits can be started: one execve string each
    argv = ["/bin/sh", "-c", spec.command]
    env = dict(spec.env.items())
    import subprocess
    done = subprocess.run(["/bin/true", *argv[2:]], env=env, check=False)
    assert done.returncode == 0


def test_datastore_paths_leave_room_for_the_datastore_root() -> None:
    problems = refusal([t(outputs=["o" * (limits.DATASTORE_PATH_BYTES - len("results/a/") + 1)])])
    assert len(problems) == 1 and "outputs[0]" in problems[0] and "3,584" in problems[0]
    problems = refusal([t(inputs=["i" * (limits.DATASTORE_PATH_BYTES + 1)])])
    assert len(problems) == 1 and "inputs[0]" in problems[0]


def test_json_nested_past_its_limit_is_refused_not_a_traceback() -> None:
    deep = "[" * 1000 + "]" * 1000
    assert refusal(deep) == [f"lists and objects nested more than {limits.JSON_NESTING} levels "
                             "deep (a task needs 4)"]


def test_a_duplicate_key_is_an_error_naming_the_key_and_its_line() -> None:
    text = '{"tasks": [\n  {"id": "a", "command": "true"},\n  {"id": "b",\n   "id": "c", "command": "x"}\n]}'
    assert refusal(text) == ['duplicate key "id" at line 4: each key may appear once in an object']
    nested = '[{"id": "a", "command": "true", "env": {"X": "1",\n "X": "2"}}]'
    assert refusal(nested) == ['duplicate key "X" at line 2: each key may appear once in an object']
    # equal keys in different objects are fine
    assert len(parse_tasks('[{"id": "a", "command": "x"}, {"id": "b", "command": "x"}]')) == 2


def test_text_that_is_not_utf8_is_refused_with_its_line() -> None:
    assert refusal(b'[{"id": "a",\n "command": "caf\xe9"}]') == [
        "not UTF-8: byte 0xe9 at line 2, column 17 (task files are UTF-8)"]
    assert refusal('[{"id": "a", "command": "x"}]'.encode("utf-16")) == [
        "the file is UTF-16; save it as UTF-8"]
    found = refusal(b'[{"id": "a", "command": "\\ud800"}]')  # a lone surrogate no log can hold
    assert len(found) == 1 and found[0].startswith("JSON syntax error at line 1")


def test_push_refuses_with_exit_2_naming_file_task_and_field(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps([t("fine"), t("huge", command="x" * (limits.COMMAND_BYTES + 1))]))
    db = f"sqlite:///{tmp_path / 'log.db'}"
    result = subprocess.run([sys.executable, "-m", "ecloud.cli.main", "push", str(path), "--db", db],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and 'tasks[1] (id "huge"): command:' in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "log.db").exists() or _events(db) == 0


def _events(db: str) -> int:
    from ecloud.log.url import open_store

    with open_store(db, create=False) as store:
        return store.head()
