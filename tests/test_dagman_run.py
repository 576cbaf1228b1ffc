"""``ecloud run x.dag``: HTCondor DAGMan files of our own, one per feature,
run as they are with real local workers, checked for DAGMan's outcome - the
exit status, which nodes ran, which are done, failed and futile (blocked),
and the rescue file (issue 21). Every job is a real process; what it did is
read back from the files it wrote."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.support.e2e import finished_events
from tests.test_run import ecloud, log_of

#: a submit file whose job writes "$(node)" to $(node).out and exits $(code)
JOB_SUB = """\
universe = vanilla
executable = /bin/sh
arguments = "-c 'echo ran $(node) >> ran.txt; exit $(code)'"
log = job.log
notification = never
queue
"""


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text)
        if name.endswith(".sh"):  # a script the kernel can execute (DAGMan execs them too)
            text = "#!/bin/sh\n" + text
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)


def _run_dag(folder: Path, dag: str = "x.dag", *args: str):
    result = ecloud(folder, "run", dag, "--local", "3", "--json", *args)
    summary = json.loads(result.stdout) if result.stdout.strip() else None
    return result, summary


def _ran(folder: Path) -> list[str]:
    path = folder / "ran.txt"
    return sorted(line.split()[1] for line in path.read_text().splitlines()) if path.exists() else []


def _vars(node: str, code: int = 0) -> str:
    return f'VARS {node} node="{node}" code="{code}"\n'


def test_a_diamond_with_a_failure_writes_dagmans_rescue_file_and_a_fresh_run_uses_it(
        tmp_path: Path) -> None:
    _write(tmp_path, {"job.sub": JOB_SUB, "x.dag": """\
        # the manual's diamond; C fails once, then (after the fix) succeeds
        JOB A job.sub
        JOB B job.sub
        JOB C job.sub
        JOB D job.sub
        PARENT A CHILD B C
        PARENT B C CHILD D
        CONFIG dagman.config
        DOT x.dot
        NODE_STATUS_FILE x.status
        """ + _vars("A") + _vars("B") + _vars("C", 1) + _vars("D")})
    result, summary = _run_dag(tmp_path)
    assert result.returncode == 1, result.stderr  # DAGMan: 1, a node failed
    assert _ran(tmp_path) == ["A", "B", "C"]
    assert [t["id"] for t in summary["failed"]] == ["C"]
    assert [(t["id"], t["blocked_by"]) for t in summary["blocked"]] == [("D", "C")]  # futile
    for keyword in ("CONFIG", "DOT", "NODE_STATUS_FILE"):
        assert f"ignored: {keyword}" in result.stderr
    assert "ignored submit command: log" in result.stderr
    rescue = (tmp_path / "x.dag.rescue001").read_text()
    assert [line for line in rescue.splitlines() if line.startswith("DONE")] == [
        "DONE A", "DONE B"]
    assert "# Nodes that failed: 1" in rescue and "C" in rescue
    # fixed, and run again in a fresh log: DAGMan's rescue run - A and B are done
    (tmp_path / "x.dag").write_text((tmp_path / "x.dag").read_text().replace(
        'code="1"', 'code="0"'))
    (tmp_path / "ran.txt").unlink()
    result, summary = _run_dag(tmp_path, "x.dag", "--db", f"sqlite:///{tmp_path}/second.db")
    assert result.returncode == 0, result.stderr
    assert "starting from the rescue file" in result.stderr
    assert _ran(tmp_path) == ["C", "D"]
    assert not (tmp_path / "x.dag.rescue002").exists()


def test_scripts_macros_pre_skip_retry_and_dir(tmp_path: Path) -> None:
    _write(tmp_path, {"job.sub": JOB_SUB, "sub/job.sub": JOB_SUB, "x.dag": """\
        JOB A job.sub
        JOB B job.sub DIR sub
        JOB S job.sub
        JOB R job.sub
        SCRIPT PRE A pre.sh $JOB $MAX_RETRIES
        SCRIPT POST B ../post.sh $JOB $RETURN $PRE_SCRIPT_RETURN status=$RETURN
        SCRIPT PRE S skip.sh
        PRE_SKIP S 3
        SCRIPT POST R post-retry.sh $RETRY $RETURN
        RETRY R 2 UNLESS-EXIT 5
        RETRY A 4
        """ + _vars("A") + _vars("B", 6) + _vars("S") + _vars("R", 1),
        "pre.sh": 'echo "pre $1 $2 $(basename $PWD)" >> scripts.txt\n',
        "post.sh": 'echo "post $*" >> ../scripts.txt\nexit 0\n',
        "skip.sh": "exit 3\n",
        "post-retry.sh": 'echo "retry $1 $2" >> scripts.txt\ntest "$1" = 1 && exit 5\nexit $2\n'})
    result, summary = _run_dag(tmp_path)
    assert result.returncode == 1, result.stderr  # R ended with its UNLESS-EXIT status
    lines = (tmp_path / "scripts.txt").read_text().splitlines()
    assert f"pre A 4 {tmp_path.name}" in lines  # $JOB, $MAX_RETRIES, run in the DAG's folder
    assert "post B 6 -1 status=$RETURN" in lines  # a macro only as a whole argument
    assert [x for x in lines if x.startswith("retry")] == ["retry 0 1", "retry 1 1"]
    assert _ran(tmp_path) == ["A", "R", "R"]  # S skipped by its PRE_SKIP; R twice
    assert _ran(tmp_path / "sub") == ["B"]  # B's job ran in its DIR
    assert {t["id"] for t in summary["failed"]} == {"R"}
    assert summary["counts"]["succeeded"] == 3


def test_abort_dag_on_returns_its_value_and_the_final_node_sees_it(tmp_path: Path) -> None:
    final_sub = JOB_SUB.replace("echo ran $(node) >> ran.txt",
                                "echo $(DAG_STATUS) $(FAILED_COUNT) > final.txt")
    _write(tmp_path, {"job.sub": JOB_SUB, "final.sub": final_sub, "x.dag": """\
        JOB A job.sub
        JOB B job.sub
        JOB LONG job.sub
        PARENT A CHILD B
        ABORT-DAG-ON A 4 RETURN 9
        RETRY A 3
        """ + _vars("A", 4) + _vars("B") + 'VARS LONG node="LONG" code="0"\n'})
    (tmp_path / "x.dag").write_text((tmp_path / "x.dag").read_text().replace(
        "JOB LONG job.sub", "JOB LONG long.sub"))
    _write(tmp_path, {"long.sub": "executable = /bin/sleep\narguments = 60\nqueue\n"})
    result, summary = _run_dag(tmp_path)
    assert result.returncode == 9, result.stderr
    assert _ran(tmp_path) == ["A"]  # the abort overrides A's retries; B never ran
    assert summary["workflow"]["status"] == "aborted"
    assert {t["id"] for t in summary["cancelled"]} == {"LONG"}  # killed by the abort
    assert [(t["id"], t["blocked_by"]) for t in summary["blocked"]] == [("B", "A")]
    rescue = (tmp_path / "x.dag.rescue001").read_text()
    assert [line for line in rescue.splitlines() if line.startswith("DONE ")] == []
    assert "# Nodes that failed: 1" in rescue
    # with a FINAL node, its result is the DAG's (the abort's included)
    dag = (tmp_path / "x.dag").read_text() + 'FINAL F final.sub\nVARS F code="0"\n'
    (tmp_path / "y.dag").write_text(dag)
    result, summary = _run_dag(tmp_path, "y.dag", "--db", f"sqlite:///{tmp_path}/y.db")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "final.txt").read_text().split() == ["3", "1"]


def test_noop_done_vars_all_nodes_priority_and_maxjobs(tmp_path: Path) -> None:
    lock_sub = textwrap.dedent("""\
        executable = /bin/sh
        arguments = "-c 'mkdir lock.$(cat) || exit 9; echo ran $(JOB) >> ran.txt; sleep 0.3; rmdir lock.$(cat)'"
        queue
        """)
    _write(tmp_path, {"lock.sub": lock_sub, "job.sub": JOB_SUB, "x.dag": """\
        JOB N job.sub NOOP
        JOB D job.sub DONE
        JOB P1 lock.sub
        JOB P2 lock.sub
        JOB P3 lock.sub
        JOB Q lock.sub
        VARS ALL_NODES cat="big" node="$(JOB)" code="0"
        VARS Q cat="other"
        CATEGORY P1 big
        CATEGORY P2 big
        CATEGORY P3 big
        MAXJOBS big 1
        PRIORITY P3 10
        PARENT D CHILD N
        PARENT N CHILD P1 P2 P3 Q
        """})
    result, summary = _run_dag(tmp_path)
    assert result.returncode == 0, (result.stderr, summary)
    ran = (tmp_path / "ran.txt").read_text().split("\n")
    assert sorted(line.split()[1] for line in ran if line) == ["P1", "P2", "P3", "Q"]
    big = [line.split()[1] for line in ran if line and line.split()[1].startswith("P")]
    assert big[0] == "P3"  # the highest priority first, one at a time (MAXJOBS big 1)
    events = finished_events(log_of(tmp_path))
    assert {e.task_id for e in events} == {"P1", "P2", "P3", "Q"}  # N and D ran nothing


def test_splice_include_and_subdag_external(tmp_path: Path) -> None:
    _write(tmp_path, {
        "job.sub": JOB_SUB,
        "inner.dag": "JOB X job.sub\nJOB Y job.sub\nPARENT X CHILD Y\n"
                     'VARS X node="in-X" code="0"\nVARS Y node="in-Y" code="0"\n',
        "more.dag": 'JOB E job.sub\nVARS E node="E" code="0"\n',
        "nested/n.dag": 'JOB K k.sub\n',
        "nested/k.sub": "executable = /bin/sh\narguments = \"-c 'echo nested > k.txt'\"\nqueue\n",
        "x.dag": """\
            JOB A job.sub
            SPLICE S inner.dag
            INCLUDE more.dag
            SUBDAG EXTERNAL N nested/n.dag
            PARENT A CHILD S
            PARENT S CHILD E N
            """ + _vars("A")})
    result, summary = _run_dag(tmp_path)
    assert result.returncode == 0, result.stderr
    assert _ran(tmp_path) == ["A", "E", "in-X", "in-Y"]
    assert (tmp_path / "nested" / "k.txt").read_text() == "nested\n"  # the nested DAG ran
    ids = {e.task_id for e in finished_events(log_of(tmp_path))}
    assert {"S+X", "S+Y", "E", "N"} <= ids
    dispatched = [r.event.task_id for r in log_of(tmp_path) if r.event.TYPE == "task.dispatched"]
    assert dispatched.index("S+Y") < dispatched.index("E")  # E waits for the splice's sinks


def test_submit_file_syntaxes_and_files(tmp_path: Path) -> None:
    _write(tmp_path, {
        "old.sub": """\
            executable = show.sh
            arguments = one two
            environment = "GREETING='hello world' OTHER=x"
            input = in.txt
            output = out/$(JOB).out
            error = out/$(JOB).err
            request_cpus = 1
            request_memory = 1 GB
            queue 1
            """,
        "new.sub": """\
            executable = show.sh
            initialdir = work
            arguments = "'a b' c"
            environment = GREETING=hi;OTHER=y
            output = new.out
            queue
            """,
        "show.sh": 'for a in "$@"; do echo "[$a]"; done; echo "$GREETING"; cat; echo err >&2\n',
        "in.txt": "from input\n",
        "out/.keep": "",
        "work/.keep": "",
        "x.dag": "JOB OLD old.sub\nJOB NEW new.sub\n"})
    result, _ = _run_dag(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "OLD.out").read_text().splitlines() == [
        "[one]", "[two]", "hello world", "from input"]
    assert (tmp_path / "out" / "OLD.err").read_text() == "err\n"
    assert (tmp_path / "work" / "new.out").read_text().splitlines() == ["[a b]", "[c]", "hi"]
    assert "ignored submit command: request_memory" in result.stderr


def test_a_bad_dag_is_refused_with_every_problem_and_nothing_runs(tmp_path: Path) -> None:
    _write(tmp_path, {"job.sub": JOB_SUB, "x.dag": """\
        JOB A job.sub
        PARENT A CHILD NOPE
        RETRY A many
        JOB A job.sub
        """})
    result, _ = _run_dag(tmp_path)
    assert result.returncode == 2
    for problem in ("x.dag:2", "x.dag:3", "x.dag:4"):
        assert problem in result.stderr, result.stderr
    assert not (tmp_path / "ecloud.db").exists()
