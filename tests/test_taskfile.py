"""Task files: every kind of problem, with its message and location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecloud.errors import UserError, ValidationError
from ecloud.events.types import InputSpec, TaskSpec
from ecloud.taskfiles.taskfile import parse_task_file, parse_tasks, validate_against

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCHEMA = Path(__file__).resolve().parent.parent / "ecloud" / "schema" / "taskfile.schema.json"


def problems(data, **kw) -> list[str]:
    """The problems parse_tasks reports for ``data`` (JSON text or objects)."""
    with pytest.raises(ValidationError) as info:
        parse_tasks(data, **kw)
    return info.value.problems


def one_problem(data, **kw) -> str:
    found = problems(data, **kw)
    assert len(found) == 1, found
    return found[0]


def t(tid: str, **kw) -> dict:
    return {"id": tid, "command": f"echo {tid}", **kw}


# ------------------------------------------------------------------ valid files


def test_full_task_parses_to_taskspec():
    data = {
        "tasks": [
            t("a", outputs=["out/a.txt", "logs/*.log"]),
            {
                "id": "b",
                "command": ["python3", "-c", "print(1)"],
                "depends_on": ["a"],
                "inputs": [
                    "data/in.csv",
                    {"path": "ref.bin", "name": "local.bin", "sha256": "AB" * 32},
                    {"from": "a", "path": "out/a.txt"},
                    {"from": "a", "path": "logs/run.log", "name": "a.log"},
                ],
                "outputs": ["b.txt"],
                "retries": 2,
                "retry_backoff": 1.5,
                "timeout": 60,
                "priority": -3,
                "env": {"MODE": "fast", "_X1": ""},
                "slots": 2,
            },
        ]
    }
    assert parse_tasks(data) == [
        TaskSpec(id="a", command="echo a", outputs=("out/a.txt", "logs/*.log")),
        TaskSpec(
            id="b",
            command=("python3", "-c", "print(1)"),
            depends_on=("a",),
            inputs=(
                InputSpec(path="data/in.csv"),
                InputSpec(path="ref.bin", name="local.bin", sha256="ab" * 32),
                InputSpec(path="out/a.txt", from_task="a"),
                InputSpec(path="logs/run.log", name="a.log", from_task="a"),
            ),
            outputs=("b.txt",),
            retries=2,
            retry_backoff=1.5,
            timeout=60.0,
            priority=-3,
            env={"MODE": "fast", "_X1": ""},
            slots=2,
        ),
    ]


def test_defaults_and_plain_list_form():
    [spec] = parse_tasks('[{"id": "x", "command": "true"}]')
    assert spec == TaskSpec(id="x", command="true")
    assert (spec.depends_on, spec.inputs, spec.outputs, spec.env) == ((), (), (), {})
    assert (spec.retries, spec.retry_backoff, spec.timeout, spec.priority, spec.slots) == (
        0, 10.0, None, 0, 1,
    )
    assert isinstance(spec.retry_backoff, float)


def test_id_charset_accepts_documented_characters():
    ids = ["a", "A9", "_x", "v1.2-rc+3", "user@host:job", "batch/07/step.1", "x" * 200]
    specs = parse_tasks([t(i) for i in ids])
    assert [s.id for s in specs] == ids


def test_dependency_on_known_task_is_accepted():
    known = {"old1", "old2"}.__contains__
    specs = parse_tasks([t("new", depends_on=["old1", "old2"])], known=known)
    assert specs[0].depends_on == ("old1", "old2")


def test_input_from_known_task_is_accepted_without_output_check():
    known = {"old"}.__contains__
    [spec] = parse_tasks([t("new", depends_on=["old"], inputs=[{"from": "old", "path": "any.txt"}])],
                         known=known)
    assert spec.inputs == (InputSpec(path="any.txt", from_task="old"),)


def test_forward_references_are_fine():
    specs = parse_tasks([t("b", depends_on=["a"]), t("a")])
    assert [s.id for s in specs] == ["b", "a"]


def test_parse_task_file_reads_a_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([t("a")]))
    assert parse_task_file(path) == [TaskSpec(id="a", command="echo a")]


def test_examples_are_valid():
    assert [s.id for s in parse_task_file(EXAMPLES / "diamond.json")] == ["a", "b", "c", "d"]
    dag = parse_task_file(EXAMPLES / "dag50.json")
    assert len(dag) >= 50
    assert max(len(s.depends_on) for s in dag) > 1  # has fan-in


def test_chain_of_100000_tasks_validates_without_recursion():
    n = 100_000
    chain = [{"id": f"t{i}", "command": "true", "depends_on": [f"t{i + 1}"]} for i in range(n - 1)]
    chain.append({"id": f"t{n - 1}", "command": "true"})  # every edge points forward
    assert len(parse_tasks(chain)) == n
    chain[-1]["depends_on"] = ["t0"]  # now it is one cycle through all of them
    [problem] = problems(chain)
    assert problem.startswith('tasks[0] (id "t0"): dependency cycle: t0 -> t1 -> t2 -> ')
    assert problem.endswith(f" -> t{n - 1} -> t0")


# ------------------------------------------------------------------ file and top level


def test_missing_file_is_a_user_error(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(UserError) as info:
        parse_task_file(path)
    assert not isinstance(info.value, ValidationError)
    assert str(path) in str(info.value)


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"id": "a", "command": "x"}\n  {"id": "b"}\n]\n')
    with pytest.raises(ValidationError) as info:
        parse_task_file(path)
    assert info.value.source == str(path)
    [problem] = info.value.problems
    assert problem.startswith("JSON syntax error at line 3, column 3: ")
    assert str(path) in str(info.value)


def test_empty_file():
    assert one_problem("  \n") == "the file is empty (expected a JSON list of tasks)"


@pytest.mark.parametrize("data", ["[]", '{"tasks": []}'])
def test_empty_task_list(data):
    assert one_problem(data) == "no tasks: the task list is empty"


def test_wrong_top_level_shape():
    assert one_problem('"echo"') == (
        'top level: expected a list of tasks or {"tasks": [...]}, got string "echo"'
    )
    assert one_problem('{"tasks": {"id": "a"}}') == "tasks: expected a list of tasks, got an object"


def test_unknown_top_level_key():
    assert problems({"tasks": [t("a")], "version": 2}) == ['top level: unknown key "version"']
    assert problems({"task": [t("a")]}) == [
        'top level: unknown key "task" (did you mean "tasks"?)',
        'top level: missing key "tasks"',
    ]


def test_task_that_is_not_an_object():
    assert one_problem([t("a"), "echo b"]) == 'tasks[1]: expected a task object, got string "echo b"'


# ------------------------------------------------------------------ per task


def test_unknown_key_suggests_the_closest():
    assert one_problem([t("a"), t("b", depend_on=["a"])]) == (
        'tasks[1] (id "b"): unknown key "depend_on" (did you mean "depends_on"?)'
    )
    assert one_problem([t("a", colour="red")]) == 'tasks[0] (id "a"): unknown key "colour"'


def test_missing_id_and_command():
    assert problems([{"command": "x"}, {"id": "b"}]) == [
        'tasks[0]: missing "id"',
        'tasks[1] (id "b"): missing "command"',
    ]


@pytest.mark.parametrize(
    "tid, message",
    [
        ("", "id: must not be empty"),
        ("a b", 'id: "a b" contains whitespace; ids use letters, digits and . _ - : / @ +'),
        ("a*b", 'id: "a*b" contains character "*"; ids use letters, digits and . _ - : / @ +'),
        ("x" * 201, "id: is 201 characters long, at most 200 are allowed"),
        ("-flag", 'id: "-flag": each /-separated part must start with a letter, digit or _ '
                  "(no empty, leading or trailing parts)"),
        ("a/../b", 'id: "a/../b": each /-separated part must start with a letter, digit or _ '
                   "(no empty, leading or trailing parts)"),
        (7, "id: expected a string, got integer 7"),
    ],
)
def test_bad_ids(tid, message):
    assert one_problem([{"id": tid, "command": "x"}]) == f"tasks[0]: {message}"


@pytest.mark.parametrize(
    "command, message",
    [
        ("", "command: must not be empty"),
        ("   ", "command: must not be empty"),
        ([], "command: an argv list must not be empty"),
        (["ls", 3], "command[1]: expected a string, got integer 3"),
        (["", "x"], "command[0]: the program name must not be empty"),
        ({"sh": "x"}, "command: expected a string or a list of strings, got an object"),
    ],
)
def test_bad_commands(command, message):
    assert one_problem([{"id": "a", "command": command}]) == f'tasks[0] (id "a"): {message}'


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("retries", "three", 'retries: expected an integer from 0 to 10,000, got string "three"'),
        ("retries", True, "retries: expected an integer from 0 to 10,000, got boolean true"),
        ("retries", -1, "retries: expected an integer from 0 to 10,000, got integer -1"),
        ("retries", 1.0, "retries: expected an integer from 0 to 10,000, got number 1.0"),
        ("retry_backoff", -1,
         "retry_backoff: expected a number of seconds from 0 to 86,400, got integer -1"),
        ("retry_backoff", False,
         "retry_backoff: expected a number of seconds from 0 to 86,400, got boolean false"),
        ("timeout", 0,
         "timeout: expected a number of seconds > 0 and at most 31,536,000, or null, got integer 0"),
        ("timeout", "1h",
         'timeout: expected a number of seconds > 0 and at most 31,536,000, or null, '
         'got string "1h"'),
        ("priority", 1.5,
         "priority: expected an integer from -1,000,000,000 to 1,000,000,000, got number 1.5"),
        ("priority", None, "priority: expected an integer from -1,000,000,000 to 1,000,000,000, got null"),
        ("slots", 0, "slots: expected an integer from 1 to 4,096, got integer 0"),
        ("slots", True, "slots: expected an integer from 1 to 4,096, got boolean true"),
        ("depends_on", "b", 'depends_on: expected a list of task ids, got string "b"'),
        ("depends_on", [1], "depends_on[0]: expected a task id (string), got integer 1"),
        ("outputs", "a.txt", 'outputs: expected a list of paths, got string "a.txt"'),
        ("inputs", {"path": "x"}, "inputs: expected a list, got an object"),
        ("env", ["A=1"], "env: expected an object of string values, got a list"),
    ],
)
def test_wrong_types(key, value, message):
    assert one_problem([t("a", **{key: value})]) == f'tasks[0] (id "a"): {message}'


def test_timeout_null_is_no_limit():
    assert parse_tasks([t("a", timeout=None)])[0].timeout is None


def test_bad_env():
    assert problems([t("a", env={"1X": "v", "OK": 3, "A-B": "x"})]) == [
        'tasks[0] (id "a"): env: "1X" is not a valid variable name '
        "(1-255 letters, digits and _, not starting with a digit)",
        'tasks[0] (id "a"): env["OK"]: expected a string, got integer 3',
        'tasks[0] (id "a"): env: "A-B" is not a valid variable name '
        "(1-255 letters, digits and _, not starting with a digit)",
    ]


def test_bad_outputs():
    assert problems([t("a", outputs=["/etc/passwd", "x/../../y", "", 5])]) == [
        'tasks[0] (id "a"): outputs[0]: "/etc/passwd" is absolute; '
        "paths are relative to the task's working directory",
        "tasks[0] (id \"a\"): outputs[1]: \"x/../../y\" must not contain '..' (it may not climb "
        "out of the task's working directory)",
        'tasks[0] (id "a"): outputs[2]: must not be empty',
        'tasks[0] (id "a"): outputs[3]: expected a relative path (string), got integer 5',
    ]


def test_results_folder_is_the_tasks_own_or_the_default():
    a, b = parse_tasks([t("a", outputs=["o"], results="campaign/run-a"),
                        t("b", depends_on=["a"], inputs=[{"from": "a", "path": "o"}])])
    assert (a.results, a.results_folder) == ("campaign/run-a", "campaign/run-a")
    assert (b.results, b.results_folder) == (None, "results/b")


def test_bad_results_folders():
    assert problems([t("a", results="/srv/out"), t("b", results="x/../../y"), t("c", results=""),
                     t("d", results=3), t("e", results="out/"), t("f", results="a//b")]) == [
        'tasks[0] (id "a"): results: "/srv/out" is absolute; '
        "paths are relative to the datastore's root",
        "tasks[1] (id \"b\"): results: \"x/../../y\" must not contain '..' (it may not climb out "
        "of the datastore's root)",
        'tasks[2] (id "c"): results: must not be empty',
        'tasks[3] (id "d"): results: expected a relative path (string), got integer 3',
        'tasks[4] (id "e"): results: "out/" is not normalized: no \'.\' parts and no leading, '
        "trailing or doubled '/'",
        'tasks[5] (id "f"): results: "a//b" is not normalized: no \'.\' parts and no leading, '
        "trailing or doubled '/'",
    ]


def test_two_tasks_may_not_share_a_results_folder():
    assert problems([t("a", results="out"), t("b", results="out"), t("c"),
                     t("d", results="results/c")]) == [
        'tasks[1] (id "b"): results: folder "out" is already task "a"\'s',
        'tasks[3] (id "d"): results: folder "results/c" is already task "c"\'s',
    ]


def test_bad_inputs():
    assert problems([t("a", outputs=["o"]), t("b", depends_on=["a"], inputs=[
        "",
        7,
        {"name": "x"},
        {"path": "p", "sha256": "abc"},
        {"path": "p", "sha": "0" * 64},
        {"from": "a", "path": "o", "sha256": "0" * 64},
        {"from": "a", "path": "/o"},
        {"path": "p", "name": "../escape"},
    ])]) == [
        f'tasks[1] (id "b"): {p}' for p in [
            "inputs[0]: must not be empty",
            'inputs[1]: expected a path or an object with "path", got integer 7',
            'inputs[2]: missing "path"',
            'inputs[3].sha256: expected 64 hexadecimal digits, got string "abc"',
            'inputs[4]: unknown key "sha" (did you mean "sha256"?)',
            'inputs[5]: "sha256" is only for datastore inputs, not with "from"',
            'inputs[6].path: "/o" is absolute; paths are relative to the upstream task\'s results',
            "inputs[7].name: \"../escape\" must not contain '..' (it may not climb out of the "
            "task's working directory)",
        ]
    ]


# ------------------------------------------------------------------ across tasks


def test_duplicate_id_names_both_positions():
    assert one_problem([t("a"), t("b"), t("a")]) == (
        'tasks[2] (id "a"): duplicate id "a", first defined at tasks[0]'
    )


def test_id_already_in_the_log():
    assert one_problem([t("a"), t("old")], known={"old"}.__contains__) == (
        'tasks[1] (id "old"): id "old" already exists in the log'
    )


def test_unknown_dependency():
    assert one_problem([t("a"), t("b"), t("c"), t("d", depends_on=["zz", "a"])]) == (
        'tasks[3] (id "d"): depends_on[0]: unknown task "zz"'
    )


def test_self_dependency():
    assert one_problem([t("a", depends_on=["a"])]) == (
        'tasks[0] (id "a"): depends_on[0]: a task cannot depend on itself'
    )


def test_duplicate_dependency():
    assert one_problem([t("a"), t("b", depends_on=["a", "a"])]) == (
        'tasks[1] (id "b"): depends_on[1]: "a" is listed twice (also depends_on[0])'
    )


def test_cycle_is_printed_once_as_a_path():
    data = [t("a", depends_on=["b"]), t("b", depends_on=["c"]), t("c", depends_on=["a"])]
    assert problems(data) == ['tasks[0] (id "a"): dependency cycle: a -> b -> c -> a']


def test_each_cycle_is_reported_once():
    data = [
        t("x"),
        t("p", depends_on=["x", "q"]), t("q", depends_on=["p"]),  # two separate cycles
        t("r", depends_on=["s"]), t("s", depends_on=["t"]), t("t", depends_on=["r"]),
        t("down", depends_on=["p", "r"]),  # depends on cycles, but is in none
    ]
    assert problems(data) == [
        'tasks[1] (id "p"): dependency cycle: p -> q -> p',
        'tasks[3] (id "r"): dependency cycle: r -> s -> t -> r',
    ]


def test_input_from_a_task_that_is_not_a_direct_dependency():
    data = [
        t("a", outputs=["a.txt"]),
        t("b", depends_on=["a"]),
        t("c", depends_on=["b"], inputs=[{"from": "a", "path": "a.txt"}]),
    ]
    assert one_problem(data) == (
        'tasks[2] (id "c"): inputs[0]: takes input from "a", which is not in depends_on '
        "(inputs can only come from direct dependencies)"
    )


def test_input_from_unknown_task_and_from_itself():
    assert problems([t("a", outputs=["o"], inputs=[{"from": "zz", "path": "o"},
                                                   {"from": "a", "path": "o"}])]) == [
        'tasks[0] (id "a"): inputs[0]: from unknown task "zz"',
        'tasks[0] (id "a"): inputs[1]: a task cannot take input from itself',
    ]


def test_input_path_must_be_a_declared_output_or_match_a_glob():
    data = [
        t("a", outputs=["result.txt", "parts/*.csv"]),
        t("b", depends_on=["a"], inputs=[
            {"from": "a", "path": "result.txt"},
            {"from": "a", "path": "parts/p1.csv"},
            {"from": "a", "path": "other.txt"},
        ]),
    ]
    assert one_problem(data) == (
        'tasks[1] (id "b"): inputs[2]: "a" does not declare output "other.txt" '
        '(its outputs: "result.txt", "parts/*.csv")'
    )


def test_many_problems_are_all_reported_in_file_order():
    data = [
        t("a", retries="three"),
        t("a"),
        {"id": "c", "comand": "x"},
        t("d", depends_on=["nope", "d"]),
        t("e", depends_on=["f"]),
        t("f", depends_on=["e"], env={"BAD NAME": "1"}),
    ]
    assert problems(data) == [
        'tasks[0] (id "a"): retries: expected an integer from 0 to 10,000, got string "three"',
        'tasks[1] (id "a"): duplicate id "a", first defined at tasks[0]',
        'tasks[2] (id "c"): unknown key "comand" (did you mean "command"?)',
        'tasks[2] (id "c"): missing "command"',
        'tasks[3] (id "d"): depends_on[0]: unknown task "nope"',
        'tasks[3] (id "d"): depends_on[1]: a task cannot depend on itself',
        'tasks[4] (id "e"): dependency cycle: e -> f -> e',
        'tasks[5] (id "f"): env: "BAD NAME" is not a valid variable name '
        "(1-255 letters, digits and _, not starting with a digit)",
    ]


def test_validation_error_message_lists_every_problem(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps([t("a", slots=0), t("b", depends_on=["zz"])]))
    with pytest.raises(ValidationError) as info:
        parse_task_file(path)
    assert str(info.value) == (
        f"{path}: 2 problems found:\n"
        '  - tasks[0] (id "a"): slots: expected an integer from 1 to 4,096, got integer 0\n'
        '  - tasks[1] (id "b"): depends_on[0]: unknown task "zz"'
    )


# ------------------------------------------------------------------ validate_against


def test_validate_against_rechecks_ids_and_dependencies():
    specs = parse_tasks([t("a"), t("b", depends_on=["a", "base"])], known={"base"}.__contains__)
    validate_against(specs, {"base"}.__contains__)  # nothing changed: fine
    with pytest.raises(ValidationError) as info:
        validate_against(specs, {"a"}.__contains__, source="f.json")
    assert info.value.source == "f.json"
    assert info.value.problems == [
        'tasks[0] (id "a"): id "a" already exists in the log',
        'tasks[1] (id "b"): depends_on[1]: unknown task "base"',
    ]


# ------------------------------------------------------------------ examples and schema

INVALID = {
    # file: (the one problem, can the JSON schema see it?)
    "cycle.json": ('tasks[1] (id "a"): dependency cycle: a -> c -> b -> a', False),
    "dangling.json": ('tasks[1] (id "b"): depends_on[1]: unknown task "zz"', False),
    "duplicate.json": ('tasks[2] (id "a"): duplicate id "a", first defined at tasks[0]', False),
    "wrong-type.json": (
        'tasks[0] (id "a"): retries: expected an integer from 0 to 10,000, got string "three"', True,
    ),
    "unknown-key.json": (
        'tasks[1] (id "b"): unknown key "depend_on" (did you mean "depends_on"?)', True,
    ),
}


def test_every_invalid_example_is_listed():
    assert sorted(p.name for p in (EXAMPLES / "invalid").glob("*.json")) == sorted(INVALID)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_example_has_exactly_its_problem(name):
    path = EXAMPLES / "invalid" / name
    with pytest.raises(ValidationError) as info:
        parse_task_file(path)
    assert info.value.problems == [INVALID[name][0]]


def _schema_validator():
    import jsonschema  # a test dependency: missing it is a failure, not a skip
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_schema_accepts_valid_examples(path):
    validator = _schema_validator()
    errors = [e.message for e in validator.iter_errors(json.loads(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("name", sorted(INVALID))
def test_schema_rejects_what_it_can_see(name):
    validator = _schema_validator()
    valid = validator.is_valid(json.loads((EXAMPLES / "invalid" / name).read_text()))
    schema_can_see = INVALID[name][1]
    assert valid is not schema_can_see


def test_schema_agrees_on_ids():
    validator = _schema_validator()
    for tid in ["a", "batch/07/step.1", "user@host:job", "x" * 200]:
        assert validator.is_valid([t(tid)]), tid
    for tid in ["", "a b", "-x", "a//b", "a/", "/a", "../a", "x" * 201]:
        assert not validator.is_valid([{"id": tid, "command": "x"}]), tid
