"""``ecloud import wfformat``: WfCommons instances (WfFormat 1.5, 1.4 and
WorkflowHub 0.2, written by hand under tests/wfformat/) as task files that
ecloud's own validator accepts, with a report of what did not carry over."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ecloud.cli.main import cli
from ecloud.errors import UserError, ValidationError
from ecloud.taskfiles.taskfile import parse_tasks
from ecloud.taskfiles.wfformat import REPLAY_SCRIPT, convert, load_instance

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "wfformat"


def instance(name: str) -> dict:
    return json.loads((HERE / name).read_text())


def by_id(tasks: list[dict]) -> dict[str, dict]:
    return {t["id"]: t for t in tasks}


def valid(tasks: list[dict]) -> None:
    """What `ecloud push` would accept."""
    specs = parse_tasks({"tasks": tasks}, source="converted")
    assert len(specs) == len(tasks)


def spec_instance(tasks: list[dict], files: list[dict] | None = None,
                  execution: list[dict] | None = None) -> dict:
    """A WfFormat 1.5 instance of these specification tasks (parents and
    children default to empty), each run by ``true`` for 1 s unless given."""
    tasks = [{"parents": [], "children": [], "name": t["id"].split("_")[0], **t} for t in tasks]
    if execution is None:
        execution = [{"id": t["id"], "runtimeInSeconds": 1.0, "command": {"program": "true"}}
                     for t in tasks]
    return {"name": "made", "schemaVersion": "1.5",
            "workflow": {"specification": {"tasks": tasks, "files": files or []},
                         "execution": {"makespanInSeconds": 1, "executedAt": "2026-01-01",
                                       "tasks": execution}}}


def notes(report) -> dict[str, int]:
    return {kind: note.count for kind, note in report.notes.items()}


# ------------------------------------------------------------ WfFormat 1.5


def test_a_15_instance_becomes_tasks_with_dependencies_files_and_commands() -> None:
    tasks, report = convert(instance("v15.json"), source="v15.json")
    valid(tasks)
    assert [t["id"] for t in tasks] == ["split_00000001", "blast_00000002", "blast_00000003",
                                        "merge_00000004", "stats_00000005"]
    t = by_id(tasks)
    assert t["split_00000001"] == {"id": "split_00000001",
                                   "command": ["split-fasta", "--parts", "2", "query.fasta"],
                                   "outputs": ["chunk.0", "chunk.1"]}
    assert t["blast_00000002"]["inputs"] == [{"from": "split_00000001", "path": "chunk.0"}]
    assert t["blast_00000002"]["slots"] == 2 and t["blast_00000003"]["slots"] == 2  # 1.5 cores
    assert t["merge_00000004"]["depends_on"] == ["blast_00000002", "blast_00000003"]
    assert t["merge_00000004"]["outputs"] == ["report/summary.txt"]
    assert t["merge_00000004"]["priority"] == 10
    # a nested path lands where the command expects it, not at its last component
    assert t["stats_00000005"]["inputs"] == [{"from": "merge_00000004",
                                              "path": "report/summary.txt",
                                              "name": "report/summary.txt"}]
    assert (report.format, report.schema_version, report.name) == ("WfFormat 1.5+", "1.5",
                                                                   "tiny-blast")
    assert (report.tasks, report.edges, report.files, report.produced_files,
            report.workflow_inputs, report.max_slots) == (5, 5, 8, 6, 2, 2)
    assert report.total_runtime_seconds == pytest.approx(20.25)
    seen = notes(report)
    assert seen["machines"] == 2 and seen["ignored:execution.tasks[].machines"] == 4
    assert seen["ignored:execution.tasks[].avgCPU"] == 1
    assert seen["unknown:execution.tasks[].gpuCount"] == 1
    assert seen["cores_rounded"] == 1 and seen["inputs_left_out"] == 2


def test_parents_and_children_that_disagree_are_unioned_and_reported() -> None:
    """blast_3 lists no parent but split lists it as a child; stats names
    merge as its parent but merge lists no child: both edges are kept."""
    tasks, report = convert(instance("v15.json"))
    t = by_id(tasks)
    assert t["blast_00000003"]["depends_on"] == ["split_00000001"]
    assert t["stats_00000005"]["depends_on"] == ["merge_00000004"]
    assert report.notes["one_sided"].count == 2
    assert report.notes["one_sided"].example == "split_00000001 -> blast_00000003"


def test_a_file_read_from_a_task_that_is_no_parent_makes_it_one() -> None:
    data = spec_instance([{"id": "w", "outputFiles": ["f"]},
                          {"id": "r", "inputFiles": ["f"], "outputFiles": ["g"]}],
                         [{"id": "f", "sizeInBytes": 5}, {"id": "g", "sizeInBytes": 6}])
    tasks, report = convert(data)
    valid(tasks)
    assert by_id(tasks)["r"]["depends_on"] == ["w"]
    assert by_id(tasks)["r"]["inputs"] == [{"from": "w", "path": "f"}]
    assert report.notes["implied"].count == 1 and report.edges == 1


def test_a_file_written_by_several_tasks_is_read_from_a_parent_that_writes_it() -> None:
    data = spec_instance([{"id": "a", "outputFiles": ["f"]}, {"id": "b", "outputFiles": ["f"]},
                          {"id": "c", "parents": ["b"], "inputFiles": ["f"]}])
    tasks, report = convert(data)
    valid(tasks)
    assert by_id(tasks)["c"]["inputs"] == [{"from": "b", "path": "f"}]
    assert report.notes["many_writers"].count == 1 and "implied" not in report.notes


def test_workflow_inputs_come_from_the_datastore_folder_given() -> None:
    tasks, report = convert(instance("v15.json"), inputs_from="data/blast")
    valid(tasks)
    assert by_id(tasks)["blast_00000002"]["inputs"] == [
        {"from": "split_00000001", "path": "chunk.0"},
        {"path": "data/blast/db.fasta", "name": "db.fasta"}]
    assert report.notes["inputs_from"].count == 2 and "inputs_left_out" not in report.notes
    with pytest.raises(UserError, match='--inputs-from: "/abs" is absolute'):
        convert(instance("v15.json"), inputs_from="/abs")


def test_a_15_instance_without_execution_converts_only_as_a_replay() -> None:
    data = instance("v15.json")
    del data["workflow"]["execution"]
    with pytest.raises(ValidationError, match=r"5 task\(s\) have no recorded command: "
                                              r"split_00000001, .*--replay-runtimes 1"):
        convert(data)
    tasks, report = convert(data, replay_scale=1.0)
    valid(tasks)
    assert "no_execution" in report.notes and report.notes["no_runtime"].count == 5


# ------------------------------------------------------ WfFormat 1.4, WorkflowHub


def test_a_14_instance_names_tasks_by_name_and_its_commands_run_as_recorded() -> None:
    tasks, report = convert(instance("v14.json"))
    valid(tasks)
    t = by_id(tasks)
    assert list(t) == ["split_ID000001", "align_ID000002", "align_ID000003", "merge_ID000004"]
    # Makeflow records the executable again as the first argument: it is the program
    assert t["split_ID000001"]["command"] == ["./split", "2", "reads.fq"]
    # redirections were recorded as arguments: the command is a shell line
    assert t["align_ID000002"]["command"] == "./align part.0 > part.0.sam 2> part.0.err"
    assert t["merge_ID000004"]["command"] == ["merge", "merged.sam", "part.0.sam", "part.1.sam"]
    assert t["align_ID000003"]["depends_on"] == ["split_ID000001"]  # named by its id
    assert t["merge_ID000004"]["depends_on"] == ["align_ID000002", "align_ID000003"]
    assert t["merge_ID000004"]["inputs"] == [{"from": "align_ID000002", "path": "part.0.sam"},
                                             {"from": "align_ID000003", "path": "part.1.sam"}]
    assert t["align_ID000002"]["outputs"] == ["part.0.sam", "part.0.err"]
    assert t["align_ID000002"]["slots"] == 2 and t["merge_ID000004"]["priority"] == 5
    assert report.format == "WfFormat 1.3-1.4" and report.edges == 4
    seen = notes(report)
    assert seen["program_repeated"] == 3 and seen["shell"] == 1 and seen["one_sided"] == 1
    assert seen["ignored:tasks[].machine"] == 4 and seen["ignored:tasks[].memoryInBytes"] == 1
    assert seen["machines"] == 1


def test_a_workflowhub_02_instance_has_no_program_so_it_replays() -> None:
    with pytest.raises(ValidationError, match=r"3 task\(s\) have no recorded command"):
        convert(instance("wfhub02.json"))
    tasks, report = convert(instance("wfhub02.json"), replay_scale=0.5)
    valid(tasks)
    t = by_id(tasks)
    assert report.format == "WorkflowHub/WfFormat 1.0-1.2" and report.schema_version == "0.2"
    assert t["preprocess_ID0000001"]["command"][4:] == ["1.25", "800", "clean.dat"]
    assert t["preprocess_ID0000001"]["priority"] == 20
    # a space and a climbing '..' are mapped to a safe relative path, the same for all
    assert t["analyze_ID0000002"]["outputs"] == ["result_dat.txt"]
    assert t["stage_out_ID0000003"]["inputs"] == [{"from": "analyze_ID0000002",
                                                   "path": "result_dat.txt"}]
    assert t["stage_out_ID0000003"]["outputs"] == ["__/archive/result.tgz"]
    assert report.notes["paths_mapped"].count == 2
    assert report.total_runtime_seconds == pytest.approx(6.6)


# ------------------------------------------------------------------ replay


def test_a_replayed_command_sleeps_and_writes_each_output_at_its_size(tmp_path: Path) -> None:
    data = spec_instance(
        [{"id": "t", "outputFiles": ["a.bin", "deep/er/b.bin", "empty", "-dash", "it's $x"]}],
        [{"id": "a.bin", "sizeInBytes": 4096}, {"id": "deep/er/b.bin", "sizeInBytes": 3},
         {"id": "empty", "sizeInBytes": 0}, {"id": "-dash", "sizeInBytes": 7},
         {"id": "it's $x", "sizeInBytes": 9}],
        [{"id": "t", "runtimeInSeconds": 20.0}])
    tasks, _ = convert(data, replay_scale=0.01)
    valid(tasks)
    task = tasks[0]
    assert task["command"][:5] == ["sh", "-c", REPLAY_SCRIPT, "wfreplay", "0.2"]
    done = subprocess.run(task["command"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    sizes = {p: (tmp_path / p).stat().st_size for p in task["outputs"]}
    assert sizes == {"a.bin": 4096, "deep/er/b.bin": 3, "empty": 0, "-dash": 7, "it_s__x": 9}
    assert (tmp_path / "a.bin").read_bytes() == bytes(4096)


def test_a_replay_at_scale_zero_does_not_sleep(tmp_path: Path) -> None:
    tasks, _ = convert(instance("v15.json"), replay_scale=0)
    assert {t["command"][4] for t in tasks} == {"0"}
    done = subprocess.run(tasks[0]["command"], cwd=tmp_path, timeout=10)
    assert done.returncode == 0
    assert (tmp_path / "chunk.0").stat().st_size == 1024


def test_what_does_not_fit_is_noted_once_with_a_count() -> None:
    data = spec_instance(
        [{"id": "a", "outputFiles": ["f", "g"]}, {"id": "b"}, {"id": "c"}],
        [{"id": "f", "sizeInBytes": -1}],
        [{"id": "a", "runtimeInSeconds": "slow", "coreCount": 5000, "priority": 2.5},
         {"id": "b", "runtimeInSeconds": 1, "coreCount": "many", "priority": 4e9},
         {"id": "b", "runtimeInSeconds": 2}, {"id": "zz", "runtimeInSeconds": 3}])
    data["schemaVersion"] = "2.0"
    tasks, report = convert(data, replay_scale=1)
    valid(tasks)
    t = by_id(tasks)
    assert t["a"]["slots"] == 4096 and t["a"]["priority"] == 2
    assert t["a"]["command"][4:] == ["0", "0", "f", "0", "g"]
    assert "slots" not in t["b"] and t["b"]["priority"] == 1_000_000_000
    assert notes(report) == {"version": 1, "stray_execution": 2, "no_size": 1, "bad_size": 1,
                             "bad_runtime": 1, "no_runtime": 1, "cores_capped": 1,
                             "priority_rounded": 1, "bad_cores": 1, "priority_capped": 1}
    assert report.notes["version"].example == "2.0"
    assert report.notes["stray_execution"].example == "b"
    assert report.notes["bad_runtime"].example == "a: 'slow'"
    assert report.notes["no_runtime"].example == "c: None"


# -------------------------------------------------------------- ids, paths


def test_ids_are_mapped_into_ecloud_s_alphabet_and_made_unique_in_order() -> None:
    long = "x" * 250
    data = spec_instance([{"id": "a#1"}, {"id": "a_1"}, {"id": "a#1x"}, {"id": "a 1"},
                          {"id": "-lead"}, {"id": "b//c/"}, {"id": long}, {"id": "ok.id:v@1+2"}])
    tasks, report = convert(data)
    valid(tasks)
    ids = [t["id"] for t in tasks]
    # a_1 is left alone, so it keeps its id; a#1 and 'a 1' both map to a_1: -2, -3
    assert ids[:6] == ["a_1-2", "a_1", "a_1x", "a_1-3", "_-lead", "b/c"]
    assert len(ids[6]) == 200 and ids[6].startswith("x" * 180)
    assert ids[7] == "ok.id:v@1+2"
    assert report.notes["ids_mapped"].count == 6 and report.notes["id_collisions"].count == 2
    assert convert(data)[0] == tasks  # deterministic


def test_file_names_are_safe_relative_paths_never_the_worker_s_own() -> None:
    names = ["stdout", "stderr/x", ".ecloud", "/abs/p", "a/../b", "glob*[1]?", "./x//y", "ok-1.txt"]
    data = spec_instance([{"id": "w", "outputFiles": names}, {"id": "r", "inputFiles": names}],
                         [{"id": n, "sizeInBytes": 1} for n in names])
    tasks, report = convert(data, replay_scale=0)
    valid(tasks)
    assert tasks[0]["outputs"] == ["stdout_", "stderr_/x", ".ecloud_", "abs/p", "a/__/b",
                                   "glob__1__", "x/y", "ok-1.txt"]
    assert [i["path"] for i in tasks[1]["inputs"]] == tasks[0]["outputs"]
    assert report.notes["paths_mapped"].count == 7


def test_two_file_names_that_map_alike_stay_two_files() -> None:
    data = spec_instance([{"id": "w", "outputFiles": ["a b", "a_b", "a?b"]}])
    tasks, report = convert(data)
    assert tasks[0]["outputs"] == ["a_b_2", "a_b", "a_b_3"]
    assert report.notes["path_collisions"].count == 2


# ------------------------------------------------------------------ errors


def test_what_is_not_json_or_not_an_instance_is_one_clear_error() -> None:
    with pytest.raises(UserError, match=r"^x.json: not JSON: .* at line 1, column"):
        load_instance(b'{"workflow": ', "x.json")
    with pytest.raises(UserError, match="x.json: the file is empty"):
        load_instance(b"  \n", "x.json")
    for data, why in [([1, 2], "the top level is not an object"),
                      ({"name": "n"}, 'no "workflow" object'),
                      ({"workflow": {"steps": []}}, '"workflow" has none of them')]:
        with pytest.raises(UserError, match=f"x.json: unknown format: .*{why}"):
            convert(data, source="x.json")


def test_a_cycle_is_refused_naming_it() -> None:
    data = spec_instance([{"id": "a", "parents": ["c"]}, {"id": "b", "parents": ["a"]},
                          {"id": "c", "parents": ["b"]}, {"id": "d", "parents": ["a"]}])
    with pytest.raises(ValidationError) as caught:
        convert(data, source="loop.json")
    assert caught.value.problems == ["dependency cycle: a -> c -> b -> a (4 task(s) cannot be "
                                     "ordered)"]
    assert str(caught.value).startswith("loop.json: 1 problem found:")
    # a cycle made by the files alone too
    data = spec_instance([{"id": "a", "inputFiles": ["g"], "outputFiles": ["f"]},
                          {"id": "b", "inputFiles": ["f"], "outputFiles": ["g"]}])
    with pytest.raises(ValidationError, match="dependency cycle: a -> b -> a"):
        convert(data)


def test_broken_references_are_all_listed_at_once() -> None:
    data = spec_instance([{"id": "a", "parents": ["nope"]}, {"id": "a"},
                          {"id": "b", "children": ["b"]}, {"id": "c", "parents": "a"}])
    with pytest.raises(ValidationError) as caught:
        convert(data)
    assert caught.value.problems == [
        "workflow.specification.tasks[3].parents: expected a list of strings",
        "workflow.specification.tasks[1]: duplicate task id 'a', first at "
        "workflow.specification.tasks[0]"]
    del data["workflow"]["specification"]["tasks"][1]
    data["workflow"]["specification"]["tasks"][2]["parents"] = []
    with pytest.raises(ValidationError) as caught:
        convert(data)
    assert caught.value.problems == [
        "workflow.specification.tasks[0].parents: unknown task 'nope'",
        "workflow.specification.tasks[1].children: the task names itself (a cycle)"]


# --------------------------------------------------------------------- CLI


def invoke(*args: str):
    return CliRunner().invoke(cli, ["import", "wfformat", *map(str, args)])


def test_the_command_writes_the_file_and_reports_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    result = invoke(HERE / "v15.json", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"{out}: 5 task(s), 5 dependencies, 8 file(s)" in result.stderr
    assert "machines described (ecloud places tasks on its own workers): 2" in result.stderr
    assert "run workers with --slots 2 or more" in result.stderr
    assert len(parse_tasks(out.read_bytes())) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["tasks.json"]  # no temporary file left


def test_the_command_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    out.write_text("mine")
    result = invoke(HERE / "v15.json", "-o", out)
    assert result.exit_code == 2
    assert f"{out} exists: give --force to overwrite it" in result.stderr
    assert out.read_text() == "mine"
    result = invoke(HERE / "v15.json", "-o", out, "--force", "--replay-runtimes", "0.5")
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["tasks"][0]["command"][0] == "sh"


def test_the_command_writes_to_stdout_and_reports_as_json() -> None:
    result = invoke(HERE / "v14.json", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["tasks"]) == 4
    assert "standard output: 4 task(s)" in result.stderr
    result = invoke(HERE / "v14.json", "-o", "-", "--json")
    assert result.exit_code == 2 and "both write to standard output" in result.stderr


def test_the_instance_can_come_from_stdin() -> None:
    result = CliRunner().invoke(cli, ["import", "wfformat", "-", "-o", "-"],
                                input=(HERE / "v14.json").read_bytes())
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["tasks"]) == 4 and "from <stdin>" in result.stderr


def test_the_json_report(tmp_path: Path) -> None:
    result = invoke(HERE / "wfhub02.json", "-o", tmp_path / "t.json", "--json",
                    "--replay-runtimes", "1")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("format", "schema_version", "tasks", "edges", "files",
                                   "workflow_inputs", "replay_scale")} == {
        "format": "WorkflowHub/WfFormat 1.0-1.2", "schema_version": "0.2", "tasks": 3, "edges": 2, "files": 4,
        "workflow_inputs": 1, "replay_scale": 1.0}
    machines = next(n for n in report["notes"] if n["kind"] == "machines")
    assert machines == {"kind": "machines", "count": 1, "example": None,
                        "what": "machines described (ecloud places tasks on its own workers)"}
    assert result.stderr == ""


@pytest.mark.parametrize(("content", "args", "message"), [
    (None, [], "cannot read {missing}: No such file or directory"),
    (b"{not json", [], "not JSON: "),
    (b'{"workflow": {"dag": []}}', [], "unknown format: "),
    (b'{"workflow": {"jobs": [{"name": "a", "parents": ["a"]}]}}', [],
     "the task names itself"),
    (b"{}", ["--replay-runtimes", "-1"], "Invalid value for '--replay-runtimes'"),
    (b"{}", ["--replay-runtimes", "nan"], "nan is not a finite number >= 0"),
    ((HERE / "v15.json").read_bytes(), ["-o", "{tmp}/no/such/dir/t.json"],
     "cannot write {tmp}/no/such/dir/t.json: No such file or directory"),
])
def test_every_mistake_is_one_message_and_exit_2(tmp_path: Path, content, args,
                                                 message: str) -> None:
    source = tmp_path / "instance.json"
    if content is not None:
        source.write_bytes(content)
    args = [a.format(tmp=tmp_path) for a in args]
    result = invoke(source, "-o", tmp_path / "out.json", *args)
    assert result.exit_code == 2, result.output
    assert message.format(missing=source, tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.json").exists()


def test_a_subprocess_gets_exit_2_and_no_traceback(tmp_path: Path) -> None:
    data = spec_instance([{"id": "a", "parents": ["b"]}, {"id": "b", "parents": ["a"]}])
    (tmp_path / "loop.json").write_text(json.dumps(data))
    done = subprocess.run([sys.executable, "-m", "ecloud.cli.main", "import", "wfformat",
                           "loop.json", "-o", "tasks.json"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: loop.json: 1 problem found:\n  - dependency cycle: "
                                  "a -> b -> a")
    assert "Traceback" not in done.stderr and not (tmp_path / "tasks.json").exists()


# ------------------------------------------------------------------- large


def test_a_large_instance_converts_and_validates() -> None:
    """3,000 tasks in 30 levels of 100, each reading 10 files of the level
    above (30,000 data edges), listed both as parents and children."""
    width, levels, fan = 100, 30, 10
    tasks, files = [], []
    for level in range(levels):
        for k in range(width):
            tid = f"t_{level}_{k}"
            ups = [f"t_{level - 1}_{(k + j) % width}" for j in range(fan)] if level else []
            downs = ([f"t_{level + 1}_{(k - j) % width}" for j in range(fan)]
                     if level < levels - 1 else [])
            tasks.append({"id": tid, "parents": ups, "children": downs,
                          "inputFiles": [f"{u}.out" for u in ups], "outputFiles": [f"{tid}.out"]})
            files.append({"id": f"{tid}.out", "sizeInBytes": k})
    data = spec_instance(tasks, files)
    before = copy.deepcopy(data)
    converted, report = convert(data, replay_scale=0.001)
    assert data == before  # the instance is not changed
    assert report.tasks == 3000 and report.edges == 29_000 and "one_sided" not in report.notes
    specs = parse_tasks({"tasks": converted})
    assert len(specs) == 3000 and sum(len(s.inputs) for s in specs) == 29_000


# -------------------------------------------------------------- end to end


@pytest.mark.slow
def test_ecloud_runs_an_imported_instance_to_the_end(tmp_path: Path) -> None:
    """The imported 1.5 instance, replayed at 1/100 of its runtimes, runs on
    local workers with data staged between the tasks through a datastore."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECLOUD_CONFIG": "", "ECLOUD_DB": ""}

    def ecloud(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ecloud.cli.main", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=180)

    made = ecloud("import", "wfformat", str(HERE / "v15.json"), "-o", "tasks.json",
                  "--replay-runtimes", "0.01")
    assert made.returncode == 0, made.stderr
    (tmp_path / "datastore").mkdir()
    result = ecloud("run", "tasks.json", "--local", "2", "--slots", "2", "--datastore",
                    str(tmp_path / "datastore"), "--json")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["counts"]["succeeded"] == 5 and outcome["exit_status"] == 0, outcome
    results = tmp_path / "datastore" / "results"
    assert (results / "merge_00000004" / "report" / "summary.txt").stat().st_size == 123
    assert (results / "stats_00000005" / "stats.txt").stat().st_size == 42
