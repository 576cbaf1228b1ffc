"""``ecloud run x.dag``: HTCondor DAGMan files of our own, one per feature,
run as they are with real local workers, checked for DAGMan's outcome - the
exit status, which nodes ran, which are done, failed and futile (blocked),
and the rescue file (issue 21). Every job is a real process; what it did is
read back from the files it wrote."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from tests.support.e2e import ROOT, finished_events
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
    script = "mkdir lock.$(cat) || exit 9; echo ran $(JOB) >> ran.txt; sleep 0.3; rmdir lock.$(cat)"
    lock_sub = f"executable = /bin/sh\narguments = \"-c '{script}'\"\nqueue\n"
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


def test_the_readme_s_example_dag_runs_as_dagman_would(tmp_path: Path) -> None:
    folder = tmp_path / "dagman"
    shutil.copytree(ROOT / "examples" / "dagman", folder)
    result, summary = _run_dag(folder, "diamond.dag")
    assert result.returncode == 0, result.stderr
    out = folder / "out"
    assert (out / "C.out").read_text() == "node C (hello from C)\n"  # VARS, both in arguments
    assert (out / "report.txt").read_text() == "DAG_STATUS=0 FAILED_COUNT=0\n"  # the FINAL node
    assert (out / "scripts.log").read_text().splitlines() == ["script for B", "script for D 0"]
    assert summary["workflow"]["final"] == "report"


def test_maxjobs_and_the_dag_status_every_script_sees(tmp_path: Path) -> None:
    running = tmp_path / "running"
    # (backquotes: $(...) is a submit macro)
    script = (f"mkdir -p {running}; touch {running}/$(JOB); sleep 0.4; n=`ls {running} | wc -l`;"
              f" rm {running}/$(JOB); echo $(JOB) $n >> counts.txt")
    _write(tmp_path, {
        "n.sub": f"executable = /bin/sh\narguments = \"-c '{script}'\"\nqueue\n",
        "bad.sub": "executable = /bin/false\nqueue\n",
        "post.sh": 'echo "$1 $2" > status.txt\n',
        "x.dag": "".join(f"JOB N{i} n.sub\n" for i in range(6))
        + "JOB BAD bad.sub\nJOB LATE n.sub\nPARENT BAD N0 CHILD LATE\nJOB AFTER n.sub\n"
          "PARENT N1 N2 N3 N4 N5 CHILD AFTER\nSCRIPT POST AFTER post.sh $DAG_STATUS $FAILED_COUNT\n"
          "PRIORITY BAD 100\n"})
    result, _ = _run_dag(tmp_path, "x.dag", "--maxjobs", "2")
    assert result.returncode == 1, result.stderr
    counts = [int(line.split()[1]) for line in (tmp_path / "counts.txt").read_text().splitlines()]
    assert len(counts) == 7 and max(counts) <= 2  # never more than 2 at once
    # AFTER's post script ran after BAD failed: DAGMan's status 2 (a node failed), 1 failed
    assert (tmp_path / "status.txt").read_text().split() == ["2", "1"]


def test_a_run_from_a_rescue_file_continues_in_its_own_log(tmp_path: Path) -> None:
    """(hostile tester) The second run in the log a rescue run started kept
    B as done and was refused as "changed"; now it continues."""
    flaky = f"test -e {tmp_path}/fixed || exit 1"
    _write(tmp_path, {"t.sub": "executable = /bin/true\nqueue\n",
                      "f.sub": f"executable = /bin/sh\narguments = \"-c '{flaky}'\"\nqueue\n",
                      "x.dag": "JOB A f.sub\nJOB B t.sub\nJOB C t.sub\nPARENT A CHILD C\n"})
    assert _run_dag(tmp_path)[0].returncode == 1  # rescue001: DONE B
    other = ("--db", f"sqlite:///{tmp_path}/o.db")
    first, _ = _run_dag(tmp_path, "x.dag", *other)
    assert first.returncode == 1 and "starting from the rescue file" in first.stderr
    (tmp_path / "fixed").touch()
    assert ecloud(tmp_path, "retry", "A", "--db", other[1]).returncode == 0
    again, summary = _run_dag(tmp_path, "x.dag", *other)
    assert again.returncode == 0, again.stderr
    assert summary["counts"] == {"succeeded": 3}
    assert not (tmp_path / "x.dag.rescue003").exists()  # the run that failed again: no copy


def test_two_dags_in_one_log_do_not_share_nodes(tmp_path: Path) -> None:
    _write(tmp_path, {"t.sub": "executable = /bin/true\nqueue\n",
                      "one.dag": "JOB A t.sub\n", "two.dag": "JOB A t.sub\nJOB B t.sub\n"})
    assert _run_dag(tmp_path, "one.dag")[0].returncode == 0
    result, _ = _run_dag(tmp_path, "two.dag")
    assert result.returncode == 2
    assert "node 'A': the log has a task 'A' from" in result.stderr
    assert "--db sqlite:///two.dag.ecloud.db" in result.stderr


def test_noop_nodes_run_their_scripts_and_need_no_submit_file(tmp_path: Path) -> None:
    """DAGMan: a NOOP node's job is not submitted (its submit file need not
    exist), its scripts run and decide."""
    _write(tmp_path, {"t.sub": "executable = /bin/true\nqueue\n",
                      "s.sh": 'echo "$1 $2" >> s.txt\nexit "${3:-0}"\n', "x.dag": """\
        JOB N missing.sub NOOP
        SCRIPT PRE N s.sh pre $JOB
        SCRIPT POST N s.sh post $RETURN
        JOB BAD missing.sub NOOP
        SCRIPT POST BAD s.sh post bad 1
        JOB PLAIN missing.sub NOOP
        FINAL F missing.sub NOOP
        PARENT N CHILD PLAIN
        """})
    result, summary = _run_dag(tmp_path)
    # BAD's post failed it; the FINAL node (a NOOP: nothing to run) succeeded, so the
    # DAG did, as DAGMan's
    assert result.returncode == 0, result.stderr
    assert sorted((tmp_path / "s.txt").read_text().splitlines()) == [
        "post 0", "post bad", "pre N"]
    assert [t["id"] for t in summary["failed"]] == ["BAD"]
    assert summary["counts"]["succeeded"] == 3  # N, PLAIN, F


def test_the_final_node_runs_again_after_a_retry(tmp_path: Path) -> None:
    flaky = f"test -e {tmp_path}/fixed || exit 1"
    _write(tmp_path, {
        "f.sub": f"executable = /bin/sh\narguments = \"-c '{flaky}'\"\nqueue\n",
        "final.sub": "executable = /bin/sh\narguments = \"-c 'echo $(DAG_STATUS) >> final.txt;"
                     " exit $(DAG_STATUS)'\"\nqueue\n",
        "x.dag": "JOB A f.sub\nFINAL F final.sub\n"})
    assert _run_dag(tmp_path)[0].returncode == 1
    (tmp_path / "fixed").touch()
    assert ecloud(tmp_path, "retry", "A").returncode == 0
    result, summary = _run_dag(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "final.txt").read_text().split() == ["2", "0"]


def test_cluster_macros_abort_on_a_signal_and_a_retried_subdag(tmp_path: Path) -> None:
    inner_job = f"test -e {tmp_path}/inner-ran || {{ touch {tmp_path}/inner-ran; exit 1; }}"
    _write(tmp_path, {
        "c.sub": "executable = /bin/sh\narguments = \"-c 'true'\"\n"
                 "output = c.$(Cluster).$(Process).out\nqueue\n",
        "kill.sub": "executable = /bin/sh\narguments = \"-c 'kill -9 $$'\"\nqueue\n",
        "sub/in.dag": "JOB I j.sub\n",
        "sub/j.sub": f"executable = /bin/sh\narguments = \"-c '{inner_job}'\"\nqueue\n",
        "x.dag": "JOB C1 c.sub\nJOB C2 c.sub\nSUBDAG EXTERNAL S sub/in.dag\nRETRY S 1\n"})
    result, _ = _run_dag(tmp_path)
    assert result.returncode == 0, result.stderr  # the sub-DAG's second attempt ran I again
    assert sorted(p.name for p in tmp_path.glob("c.*.out")) == ["c.1.0.out", "c.2.0.out"]
    (tmp_path / "k.dag").write_text("JOB K kill.sub\nJOB L c.sub\nPARENT K CHILD L\n"
                                    "ABORT-DAG-ON K -9 RETURN 4\n")
    result, summary = _run_dag(tmp_path, "k.dag", "--db", f"sqlite:///{tmp_path}/k.db")
    assert result.returncode == 4, result.stderr  # SIGKILL is DAGMan's $RETURN -9
    assert summary["workflow"]["aborted_by"] == "K"


def test_a_cycle_is_reported_at_the_node_s_line(tmp_path: Path) -> None:
    _write(tmp_path, {"t.sub": "executable = /bin/true\nqueue\n",
                      "c.dag": "JOB A t.sub\nJOB B t.sub\nPARENT A CHILD B\nPARENT B CHILD A\n"})
    result = ecloud(tmp_path, "push", "c.dag", "--dry-run")
    assert result.returncode == 2
    assert f"{tmp_path}/c.dag:1: node A: dependency cycle: A -> B -> A" in result.stderr
