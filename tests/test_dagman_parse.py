"""The HTCondor DAGMan readers: .dag files, submit descriptions, rescue files.

The expected values come from the HTCondor manual's own examples where it has
them (docs/automated-workflows, the condor_submit man page); the fixtures are
under tests/dags/parse/.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ecloud.errors import ValidationError
from ecloud.taskfiles.dagman import (
    AbortDagOn,
    Node,
    NodeVar,
    apply_rescue,
    expand_script_macros,
    load_dag,
    newest_rescue,
    next_rescue_path,
    parse_arguments,
    parse_dag,
    parse_environment,
    parse_memory_mib,
    parse_node_submit,
    parse_submit_file,
    parse_submit_text,
    read_rescue,
    rescue_path,
    retire_rescues_after,
    write_rescue,
)

HERE = Path(__file__).parent / "dags" / "parse"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(call, *args, **kwargs) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        call(*args, **kwargs)
    return caught.value.problems


def dag_problems(folder: Path, text: str, name: str = "t.dag") -> tuple[Path, list[str]]:
    path = write(folder, name, text)
    return path, problems(parse_dag, path)


# ====================================================================== .dag files


def test_a_diamond_written_bottom_up_reads_with_forward_references() -> None:
    dag = parse_dag(HERE / "diamond.dag")
    assert list(dag.nodes) == ["A", "B", "C", "D"]
    assert set(dag.edges) == {("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")}
    a = dag.nodes["A"]
    assert a.kind == "job" and a.dir == HERE and a.submit == HERE / "job.sub"
    assert (a.file, a.line) == (HERE / "diamond.dag", 7)
    assert dag.final is None and dag.ignored == () and dag.path == HERE / "diamond.dag"


def test_parent_child_joins_every_parent_to_every_child_once(tmp_path: Path) -> None:
    path = write(tmp_path, "x.dag", "JOB p1 s\nJOB p2 s\nJOB c1 s\nJOB c2 s\n"
                                    "PARENT p1 p2 CHILD c1 c2\nPARENT p1 p1 CHILD c1\n")
    assert parse_dag(path).edges == (("p1", "c1"), ("p1", "c2"), ("p2", "c1"), ("p2", "c2"))


def test_job_dir_noop_done_and_quoted_names() -> None:
    nodes = parse_dag(HERE / "directives.dag").nodes
    assert (nodes["A"].dir, nodes["A"].submit) == (HERE / "nodes", HERE / "nodes" / "a.sub")
    assert nodes["A"].noop and not nodes["A"].done
    assert nodes["B"].done and not nodes["B"].noop
    assert nodes["C"].kind == "job"  # NODE is JOB's synonym
    assert nodes["D"].submit == HERE / "nodes" / "spaced name.sub"


def test_subdag_external_is_a_node_whose_work_is_a_dag_file() -> None:
    inner = parse_dag(HERE / "directives.dag").nodes["Inner"]
    assert inner.kind == "subdag" and inner.submit is None
    assert inner.dag_file == HERE / "nodes" / "inner.dag" and inner.dir == HERE / "nodes"


def test_final_provisioner_and_service_nodes() -> None:
    dag = parse_dag(HERE / "directives.dag")
    assert dag.final == "Cleanup" and dag.nodes["Cleanup"].kind == "final"
    assert dag.nodes["Boot"].kind == "provisioner"
    assert dag.nodes["Watch"].kind == "service"


def test_scripts_keep_their_command_line_and_defer_and_debug() -> None:
    nodes = parse_dag(HERE / "directives.dag").nodes
    pre, post, hold = nodes["A"].pre, nodes["A"].post, nodes["A"].hold
    assert pre is not None and post is not None and hold is not None
    assert (pre.kind, pre.command, pre.defer_status) == ("pre", "pre.sh $JOB .gz", None)
    assert post.command == "post.sh $JOB $RETURN status=$RETURN"
    assert (post.defer_status, post.defer_seconds) == (4, 30)
    assert (hold.command, hold.debug_file, hold.debug_streams) == ("notify.sh $JOBID",
                                                                    "script.log", "ALL")
    check = nodes["C"].pre
    assert check is not None
    assert (check.defer_status, check.defer_seconds, check.debug_streams) == (2, 0, "STDERR")
    final_pre = nodes["Cleanup"].pre
    assert final_pre is not None and final_pre.command == "final_pre.pl $DAG_STATUS $FAILED_COUNT"
    assert post.executable == "post.sh"
    assert post.argv({"JOB": "A", "RETURN": -1}) == ["post.sh", "A", "-1", "status=$RETURN"]


def test_retry_abort_pre_skip_priority_category_maxjobs_done() -> None:
    dag = parse_dag(HERE / "directives.dag")
    c, d, a = dag.nodes["C"], dag.nodes["D"], dag.nodes["A"]
    assert (c.retry, c.retry_unless_exit) == (3, 42)
    assert c.abort_on == AbortDagOn(10, 1) and d.abort_on == AbortDagOn(7, None)
    assert a.pre_skip == 99
    assert (c.priority, d.priority, a.priority) == (5, -2, 0)
    assert (c.category, d.category) == ("heavy", "light")
    assert dag.maxjobs == {"heavy": 2, "light": 10}
    assert c.done  # the DONE line


def test_all_nodes_skips_final_and_service_and_later_commands_win() -> None:
    nodes = parse_dag(HERE / "directives.dag").nodes
    assert {n.name: n.retry for n in nodes.values()} == {
        "A": 1, "B": 1, "C": 3, "D": 1, "Inner": 1, "Cleanup": 0, "Boot": 1, "Watch": 0}
    assert nodes["Cleanup"].category is None and nodes["Watch"].category is None


def test_all_nodes_order_matters_as_the_manual_shows(tmp_path: Path) -> None:
    path = write(tmp_path, "all.dag", 'JOB A n.sub\nJOB B n.sub\nJOB C n.sub\n'
                 'SCRIPT PRE ALL_NODES my_script $JOB\nVARS A name="alphaNode"\n'
                 'VARS ALL_NODES name="$(JOB)"\nVARS B name="nodeB"\n'
                 'RETRY all_nodes 3\nRETRY A 10\n')
    nodes = parse_dag(path).nodes
    assert [nodes[n].retry for n in "ABC"] == [10, 3, 3]
    assert [nodes[n].vars[-1].value for n in "ABC"] == ["$(JOB)", "nodeB", "$(JOB)"]
    assert all(nodes[n].pre is not None for n in "ABC")


def test_ignored_directives_are_listed_whole() -> None:
    dag = parse_dag(HERE / "directives.dag")
    assert [(i.keyword, i.line) for i in dag.ignored] == [
        ("CONFIG", 34), ("DOT", 35), ("NODE_STATUS_FILE", 36), ("JOBSTATE_LOG", 37),
        ("SET_JOB_ATTR", 38), ("ENV", 39), ("SAVE_POINT_FILE", 40), ("MAXPRE", 41)]
    assert dag.ignored[4].text == "SET_JOB_ATTR TestNumber = 17"
    assert dag.rejected is None


def test_reject_connect_and_pins_are_recorded(tmp_path: Path) -> None:
    write(tmp_path, "a.dag", "JOB A1 a.sub\nPIN_OUT A1 1\n")
    write(tmp_path, "b.dag", "JOB B1 b.sub\nPIN_IN B1 1\n")
    path = write(tmp_path, "top.dag", "SPLICE A a.dag\nSPLICE B b.dag\nconnect A B\nREJECT\n"
                                      "MaxPost 2\nMAXIDLE 5\n")
    dag = parse_dag(path)
    assert [i.keyword for i in dag.ignored] == ["PIN_OUT", "PIN_IN", "CONNECT", "REJECT",
                                                "MAXPOST", "MAXIDLE"]
    assert dag.rejected is not None and dag.rejected.line == 4


def test_keywords_are_case_insensitive_node_names_are_not(tmp_path: Path) -> None:
    path = write(tmp_path, "c.dag", "job a a.sub dir d noop\nJob A a.sub Done\n"
                                    "Parent a Child A\nretry a 2 unless-exit 3\n"
                                    "Abort-Dag-On A 4 return 5\npre_skip a 6\npriority A 7\n"
                                    "category a cat\nmaxjobs cat 1\nscript defer 1 2 pre a s.sh\n"
                                    "Vars A Append k=\"v\"\ndone a\n")
    nodes = parse_dag(path).nodes
    assert set(nodes) == {"a", "A"}
    a, big_a = nodes["a"], nodes["A"]
    assert a.noop and a.dir == tmp_path / "d" and big_a.done and a.done
    assert (a.retry, a.retry_unless_exit, big_a.abort_on) == (2, 3, AbortDagOn(4, 5))
    assert (a.pre_skip, big_a.priority, a.category) == (6, 7, "cat")
    assert big_a.vars == (NodeVar("k", "v", "append"),)


def test_windows_line_ends_read_the_same(tmp_path: Path) -> None:
    path = write(tmp_path, "w.dag", "")
    path.write_bytes(b'JOB A a.sub\r\nJOB B {\r\n executable = x\r\n arguments = "1 2"\r\n}\r\n'
                     b'PARENT A CHILD B\r\nVARS A k="v"\r\n')
    dag = parse_dag(path)
    assert dag.edges == (("A", "B"),) and dag.nodes["A"].vars == (NodeVar("k", "v"),)
    assert parse_node_submit(dag.nodes["B"]).argv() == [str(tmp_path / "x"), "1", "2"]


# ---------------------------------------------------------------------- VARS


def test_vars_values_unescape_as_the_manual_shows() -> None:
    nodes = parse_dag(HERE / "vars.dag").nodes
    a = {v.name: v.value for v in nodes["NodeA"].vars}
    assert a["first"] == "Alberto Contador"
    assert a["second"] == '""Andy Schleck""'
    assert a["third"] == "Lance\\ Armstrong"
    assert a["fourth"] == "Vincenzo ''The Shark'' Nibali"
    assert a["misc"] == "!@#$%^&*()_-=+=[]{}?/"
    assert {v.name: v.value for v in nodes["NodeB"].vars}["second"] == '\\"Andreas_Kloden\\"'
    assert parse_dag(HERE / "tab.dag").nodes["T"].vars == (NodeVar("tabbed", "a\tb"),)


def test_vars_placement_white_space_and_plus_names() -> None:
    nodes = parse_dag(HERE / "vars.dag").nodes
    assert nodes["NodeC"].vars[1:] == (
        NodeVar("shared", "for all"), NodeVar("other", "x"), NodeVar("early", "1", "prepend"),
        NodeVar("late", "2", "append"), NodeVar("tight", "3", "append"))
    assert nodes["NodeF"].vars[2:] == (NodeVar("My.A", '"bob"'), NodeVar("My.B", '"ann"'))


@pytest.mark.parametrize(("line", "fragment"), [
    ('VARS A x=y', "must be in double quotes"),
    ('VARS A x="a\\nb"', "unknown escape sequence \\n"),
    ('VARS A x="open', "no closing double quote"),
    ('VARS A queue_len="1"', "begins with 'queue'"),
    ('VARS A Queue="1"', "begins with 'queue'"),
    ('VARS A a+b="1"', "'+' can only start"),
    ('VARS A', 'no name="value" pairs'),
    ('VARS A x="1" APPEND y="2"', "APPEND must come right after the node name"),
    ('VARS A x "1"', "expected = after macro name 'x'"),
    ('VARS A ="1"', "where a macro name should start"),
])
def test_vars_syntax_errors(tmp_path: Path, line: str, fragment: str) -> None:
    path, found = dag_problems(tmp_path, f"JOB A a.sub\n{line}\n")
    assert len(found) == 1 and found[0].startswith(f"{path}:2: VARS: ")
    assert fragment in found[0]


# ---------------------------------------------------------------------- SPLICE, INCLUDE


def test_splices_name_their_nodes_and_connect_through_initial_and_terminal_nodes() -> None:
    dag = parse_dag(HERE / "splice_top.dag")
    assert list(dag.nodes)[:6] == ["X", "Y", "DIAMOND+A", "DIAMOND+B", "DIAMOND+C", "DIAMOND+D"]
    edges = set(dag.edges)
    assert {("DIAMOND+A", "DIAMOND+B"), ("DIAMOND+C", "DIAMOND+D")} <= edges
    assert ("X", "DIAMOND+A") in edges and ("DIAMOND+D", "Y") in edges
    assert not any(p == "X" and c.startswith("DIAMOND+") and c != "DIAMOND+A" for p, c in edges)
    # the terminal nodes of X1 (E F G) are the parents of the initial nodes of X2 (A B C)
    joined = {(p, c) for p, c in edges if p.startswith("X1+") and c.startswith("X2+")}
    assert joined == {(f"X1+{p}", f"X2+{c}") for p in "EFG" for c in "ABC"}
    assert {("X2+E", "Y"), ("X2+F", "Y"), ("X2+G", "Y")} <= edges
    assert dag.splices["X1"] == HERE / "splice" / "x.dag"


def test_nested_splices_scope_names_and_take_paths_from_the_splice_dir() -> None:
    dag = parse_dag(HERE / "splice_top.dag")
    assert [n for n in dag.nodes if n.startswith("Deep+")] == [
        "Deep+Top", "Deep+Mid+Leaf", "Deep+Mid+Leaf2"]
    assert ("Deep+Top", "Deep+Mid+Leaf") in dag.edges
    assert ("Deep+Mid+Leaf", "Deep+Mid+Leaf2") in dag.edges
    top = dag.nodes["Deep+Top"]
    assert top.dir == HERE / "splice" / "work" and top.submit == HERE / "splice" / "work" / "simple.sub"
    assert dag.nodes["Deep+Mid+Leaf"].dir == HERE / "splice"
    assert dag.splices["Deep+Mid"] == HERE / "splice" / "inner" / "mid.dag"
    # without DIR a splice's paths stay relative to the top DAG's folder
    assert dag.nodes["DIAMOND+A"].submit == HERE / "simple.sub"


def test_splice_categories_are_scoped_and_outer_maxjobs_win() -> None:
    dag = parse_dag(HERE / "splice_top.dag")
    assert dag.nodes["X1+A"].category == "X1+catX"
    assert dag.nodes["X2+B"].category == "+catY"
    assert dag.maxjobs == {"X1+catX": 10, "X2+catX": 5, "+catY": 2}


def test_all_nodes_does_not_reach_into_splices() -> None:
    nodes = parse_dag(HERE / "splice_top.dag").nodes
    assert (nodes["X"].retry, nodes["Y"].retry) == (2, 2)
    assert all(n.retry == 0 for name, n in nodes.items() if "+" in name)


def test_include_is_textual_with_paths_from_the_top_dag_folder() -> None:
    dag = parse_dag(HERE / "include_main.dag")
    assert list(dag.nodes) == ["Split", "Process0", "Process1", "Combine"]
    assert set(dag.edges) == {("Split", "Process0"), ("Split", "Process1"),
                              ("Process0", "Combine"), ("Process1", "Combine")}
    assert dag.nodes["Process0"].file == HERE / "nodes" / "include_nodes.inc"
    assert dag.nodes["Process0"].submit == HERE / "process.sub"
    # the ALL_NODES of an INCLUDEd file reaches every node of the DAG
    assert all(n.vars == (NodeVar("dataset", "data57"),) for n in dag.nodes.values())


def test_inline_and_named_submit_descriptions() -> None:
    nodes = parse_dag(HERE / "inline.dag").nodes
    a, b, c = nodes["A"], nodes["B"], nodes["C"]
    assert a.submit is None and a.inline_submit is not None and a.inline_submit.name == "Shared"
    assert a.inline_submit.first_line == 2 and "executable = /bin/echo" in a.inline_submit.text
    assert b.inline_submit is not None and b.inline_submit.first_line == 8
    assert c.inline_submit == a.inline_submit and c.dir == HERE / "sub"
    shared_a, own_b, shared_c = (parse_node_submit(n) for n in (a, b, c))
    assert shared_a.argv() == ["/bin/echo", "shared", "A"]
    assert shared_c.argv() == ["/bin/echo", "shared", "C"] and shared_c.cwd == HERE / "sub"
    assert (shared_a.request_memory_mib, own_b.request_cpus) == (1024, 2)


def test_a_submit_description_may_be_declared_after_the_jobs_using_it(tmp_path: Path) -> None:
    path = write(tmp_path, "late.dag", "JOB A Later\nJOB B later.sub\n"
                                       "SUBMIT-DESCRIPTION Later {\n executable = /bin/date\n}\n")
    nodes = parse_dag(path).nodes
    assert nodes["A"].inline_submit is not None and nodes["A"].inline_submit.first_line == 4
    assert nodes["B"].submit == tmp_path / "later.sub" and nodes["B"].inline_submit is None


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("JOB A a.sub\nPARENT A CHILD Z\n", 2, "unknown node 'Z'"),
    ("JOB A a.sub\nRETRY Z 2\n", 2, "RETRY: unknown node 'Z'"),
    ("JOB A a.sub\nSCRIPT PRE Z s.sh\n", 2, "SCRIPT: unknown node 'Z'"),
    ("JOB A a.sub\nDONE Z\n", 2, "DONE: unknown node 'Z'"),
    ("JOB A a.sub\nJOB A b.sub\n", 2, "duplicate node 'A' (first defined at"),
    ("JOB A a.sub\nRETRY A x\n", 2, "bad number 'x'"),
    ("JOB A a.sub\nRETRY A -1\n", 2, "bad number '-1'"),
    ("JOB A a.sub\nRETRY A 2 UNLESS-EXIT\n", 2, "missing the UNLESS-EXIT value"),
    ("JOB A a.sub\nPRIORITY A 1.5\n", 2, "bad number '1.5'"),
    ("JOB A a.sub\nABORT-DAG-ON A 3 RETURN 300\n", 2, "from 0 to 255"),
    ("JOB A a.sub\nMAXJOBS c -1\n", 2, "bad number '-1'"),
    ("JOB A a.sub\nSCRIPT DEFER 0 5 PRE A s.sh\n", 2, "bad number '0'"),
    ("JOB A a.sub\nPRE_SKIP A 0\n", 2, "must not be 0"),
    ("JOB A a.sub\nFROB A\n", 2, "unknown keyword 'FROB'"),
    ("JOB A a.sub\nJOB B a.sub\nPARENT A B\n", 3, "PARENT without CHILD"),
    ("JOB A a.sub\nPARENT CHILD A\n", 2, "no parent node before CHILD"),
    ("JOB A a.sub\nPARENT A CHILD\n", 2, "no child node after CHILD"),
    ("JOB A a.sub NOOP DIR d\n", 1, "unexpected 'DIR'"),
    ("JOB A\n", 1, "needs a node name and a submit description"),
    ("JOB A a.sub DIR\n", 1, "DIR needs a directory"),
    ("JOB Parent a.sub\n", 1, "reserved word"),
    ("JOB a+b a.sub\n", 1, "contains '+'"),
    ("FINAL F f.sub\nFINAL G g.sub\n", 2, "at most one FINAL node"),
    ("FINAL F f.sub DONE\n", 1, "cannot be DONE"),
    ("JOB A a.sub\nFINAL F f.sub\nPARENT A CHILD F\n", 3, "cannot name the FINAL node"),
    ("FINAL F f.sub\nRETRY F 2\n", 2, "RETRY cannot be applied to the FINAL node"),
    ("FINAL F f.sub\nPRIORITY F 2\n", 2, "PRIORITY cannot be applied to the FINAL node"),
    ("SERVICE S s.sub\nCATEGORY S c\n", 2, "cannot be applied to the SERVICE node"),
    ("PROVISIONER P p.sub\nPROVISIONER Q q.sub\n", 2, "at most one PROVISIONER"),
    ("SUBDAG INTERNAL A a.dag\n", 1, "SUBDAG needs the EXTERNAL keyword"),
    ("JOB A a.sub\nSCRIPT A s.sh\n", 2, "SCRIPT needs PRE, POST or HOLD"),
    ("JOB A a.sub\nSCRIPT POST A\n", 2, "names no script to run"),
    ("JOB A a.sub\nSCRIPT DEBUG f.log BOTH PRE A s.sh\n", 2, "is not STDOUT, STDERR or ALL"),
    ("JOB A a.sub\nPRIORITY A 1 2\n", 2, "unexpected '2'"),
    ("JOB A a.sub\nDONE A B\n", 2, "unexpected 'B'"),
    ("INCLUDE\n", 1, "INCLUDE takes one file name"),
    ("INCLUDE missing.inc\n", 1, "cannot read the INCLUDE file"),
    ("SPLICE S missing.dag\n", 1, "cannot read the SPLICE file"),
    ("JOB A {\nexecutable = x\n", 1, "has no closing } line"),
    ("SUBMIT-DESCRIPTION D d.sub\n", 1, "SUBMIT-DESCRIPTION needs a name and a { block"),
])
def test_each_problem_names_its_file_and_line(tmp_path: Path, text: str, line: int,
                                              fragment: str) -> None:
    path, found = dag_problems(tmp_path, text)
    assert any(p.startswith(f"{path}:{line}: ") and fragment in p for p in found), found


def test_every_problem_of_a_file_is_listed_with_included_lines_cited(tmp_path: Path) -> None:
    write(tmp_path, "more.inc", "JOB B b.sub\nRETRY Nope 1\n")
    path, found = dag_problems(tmp_path, "JOB A a.sub\nINCLUDE more.inc\nPRIORITY A high\n"
                                         "PARENT A CHILD Ghost\n")
    inc = tmp_path / "more.inc"
    assert found == [
        f"{inc}:2: RETRY: unknown node 'Nope'",
        f"{path}:3: PRIORITY: bad number 'high' for the priority (expected a whole number)",
        f"{path}:4: PARENT/CHILD: unknown node 'Ghost'",
    ]


def test_splice_problems(tmp_path: Path) -> None:
    write(tmp_path, "final.dag", "JOB In a.sub\nFINAL F f.sub\n")
    write(tmp_path, "self.dag", "JOB In a.sub\nSPLICE Again self.dag\n")
    write(tmp_path, "ok.dag", "JOB In a.sub\n")
    path, found = dag_problems(tmp_path, "SPLICE S final.dag\nSPLICE R self.dag\nJOB A a.sub\n"
                                         "SPLICE A ok.dag\nSPLICE T ok.dag\nSPLICE T ok.dag\n"
                                         "RETRY T 2\nVARS T x=\"1\"\n")
    text = "\n".join(found)
    assert f"{tmp_path / 'final.dag'}:2: FINAL node 'S+F' is in a splice" in text
    assert f"{tmp_path / 'self.dag'}:2: SPLICE 'Again' splices" in text and "splice cycle" in text
    assert f"{path}:4: splice name 'A' is already a node name" in text
    assert f"{path}:6: splice name 'T' is used twice" in text
    assert f"{path}:7: RETRY cannot be applied to splice 'T'" in text
    assert f"{path}:8: VARS cannot be applied to splice 'T'" in text


def test_include_cycles_are_caught(tmp_path: Path) -> None:
    write(tmp_path, "loop.inc", "JOB B b.sub\nINCLUDE t.dag\n")
    path, found = dag_problems(tmp_path, "JOB A a.sub\nINCLUDE loop.inc\n")
    assert found == [f"{tmp_path / 'loop.inc'}:2: INCLUDE of {path} includes itself (through "
                     f"{path} -> {tmp_path / 'loop.inc'} -> {path})"]


def test_a_missing_or_garbled_dag_file_is_a_validation_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dag"
    assert problems(parse_dag, missing) == [
        f"{missing}: cannot read the DAG file: No such file or directory"]
    garbage = tmp_path / "junk.dag"
    garbage.write_bytes(b"\xff\xfe\x00JOB\x00 \x01\nPARENT\n{}\n")
    # bytes that are not UTF-8 could not be stored in the log: refused, with the line
    assert problems(parse_dag, garbage) == [f"{garbage}:1: not UTF-8 (byte 0xff); save the file "
                                            "as UTF-8"]


def test_a_large_dag_parses(tmp_path: Path) -> None:
    """5,000 nodes and 20,000 edges (the parser is linear; no timing asserted)."""
    lines = [f"JOB n{i} job.sub" for i in range(5000)]
    lines += [f"PARENT n{i} CHILD n{i + k}" for i in range(5000) for k in (1, 2, 3, 4)
              if i + k < 5000]
    lines += [f"PARENT n{i} CHILD n{i + 5}" for i in range(10)]
    path = write(tmp_path, "big.dag", "\n".join(lines) + "\n")
    dag = parse_dag(path)
    assert len(dag.nodes) == 5000 and len(dag.edges) == 20000


# ---------------------------------------------------------------------- script macros


@pytest.mark.parametrize(("text", "expected"), [
    ("pre.sh $JOB .gz", "pre.sh B .gz"),
    ("stage-out job_status $RETURN", "stage-out job_status -1"),
    ("stage-out job_status=$RETURN", "stage-out job_status=$RETURN"),
    ("s $RETRY\t$MAX_RETRIES  $DAG_STATUS $FAILED_COUNT", "s 0\t3  2 1"),
    ("post $JOBID $PRE_SCRIPT_RETURN $UNKNOWN $job", "post 12.0 -1 $UNKNOWN $job"),
    ("$JOB", "B"),
    ("x $JOB$RETRY", "x $JOB$RETRY"),
])
def test_expand_script_macros_as_documented(text: str, expected: str) -> None:
    values = {"JOB": "B", "RETURN": -1, "RETRY": 0, "MAX_RETRIES": 3, "DAG_STATUS": 2,
              "FAILED_COUNT": 1, "$JOBID": "12.0", "PRE_SCRIPT_RETURN": -1, "UNKNOWN": "no"}
    assert expand_script_macros(text, values) == expected


def test_a_macro_without_a_value_is_left_alone() -> None:
    assert expand_script_macros("p $JOB $RETURN", {"JOB": "A"}) == "p A $RETURN"


# ====================================================================== submit descriptions


@pytest.mark.parametrize(("value", "expected"), [
    ('"3 simple arguments"', ["3", "simple", "arguments"]),
    ("\"one 'two with spaces' 3\"", ["one", "two with spaces", "3"]),
    ("\"one \"\"two\"\" 'spacey ''quoted'' argument'\"", ["one", '"two"', "spacey 'quoted' argument"]),
    ('"back\\slash \\"', ["back\\slash", "\\"]),
    ("\"'' a'b c'd\"", ["", "ab cd"]),
    ('""', []),
    ("one \\\"two\\\" 'three'", ["one", '"two"', "'three'"]),
    ("  a\tb  ", ["a", "b"]),
    ("", []),
])
def test_arguments_in_both_syntaxes(value: str, expected: list[str]) -> None:
    assert parse_arguments(value) == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ('"one "two""', "lone double quote"),
    ("\"it's\"", "single quote is not closed"),
    ('"unterminated', "must end with a double quote"),
])
def test_bad_arguments(value: str, fragment: str) -> None:
    assert fragment in problems(parse_arguments, value)[0]


def test_environment_in_both_syntaxes() -> None:
    assert parse_environment("\"one=1 two=\"\"2\"\" three='spacey ''quoted'' value'\"") == {
        "one": "1", "two": '"2"', "three": "spacey 'quoted' value"}
    assert parse_environment("one=1;two=2;three=\"quotes have no 'special' meaning\"") == {
        "one": "1", "two": "2", "three": "\"quotes have no 'special' meaning\""}
    assert parse_environment("a=1;;b= spaced ;") == {"a": "1", "b": " spaced "}
    assert parse_environment('"empty="') == {"empty": ""}
    assert "is not name=value" in problems(parse_environment, "a=1;oops")[0]
    assert "is not name=value" in problems(parse_environment, '"=x"')[0]


@pytest.mark.parametrize(("value", "mib"), [
    ("1024", 1024), ("512M", 512), ("512mb", 512), ("2GB", 2048), ("4 G", 4096),
    ("32 Mb", 32), ("1024K", 1), ("1500KB", 2), ("1.5g", 1536), ("1T", 1024 * 1024),
    (".5 GB", 512),
])
def test_request_memory_units(value: str, mib: int) -> None:
    assert parse_memory_mib(value) == mib


@pytest.mark.parametrize("value", ["lots", "max({60, Target.TotalSlotMemory})", "0", "5 PB", ""])
def test_request_memory_that_is_not_a_quantity(value: str) -> None:
    assert problems(parse_memory_mib, value)[0].startswith("request_memory: ")


def test_a_full_submit_file() -> None:
    sub = parse_submit_file(HERE / "full.sub", dagman_macros={"JOB": "N1", "ClusterId": 42})
    run = HERE / "runs" / "N1"
    assert sub.executable == "/opt/tools/run.sh" and sub.initialdir == run
    assert sub.arguments == ("--name", "nobody", "--dollar", "$HOME", "--tail", "continued")
    assert (sub.input, sub.output, sub.error) == (run / "in.0", run / "out.42.0", run / "err.42")
    assert (sub.request_cpus, sub.request_memory_mib) == (4, 2048)
    assert sub.environment == (("one", "1"), ("two", '"2"'), ("three", "spacey 'quoted' value"))
    assert sub.getenv == ("PATH", "LANG*", "!LANGUAGE")
    assert [(i.key, i.line) for i in sub.ignored] == [
        ("Universe", 2), ("Log", 9), ("Request_Disk", 12), ("requirements", 17),
        ("+ProjectName", 18), ("MY.Color", 19), ("should_transfer_files", 20),
        ("notification", 21)]
    assert sub.undefined_macros == ()
    assert sub.argv()[0] == "/opt/tools/run.sh"
    submitter = {"PATH": "/bin", "LANG": "C", "lang_x": "z", "LANGUAGE": "en", "HOME": "/h",
                 "one": "from the submitter"}
    assert sub.environment_dict(submitter) == {
        "PATH": "/bin", "LANG": "C", "lang_x": "z", "one": "1", "two": '"2"',
        "three": "spacey 'quoted' value"}
    assert sub.environment_dict() == dict(sub.environment)


def test_getenv_true_false_and_negations(tmp_path: Path) -> None:
    environ = {"PATH": "/bin", "INCLUDE": "/inc", "path_extra": "x", "HOME": "/h"}
    for value, expected in [("True", environ), ("false", {}),
                            ("!PATH, !INCLUDE", {"path_extra": "x", "HOME": "/h"}),
                            ("*path*", {"PATH": "/bin", "path_extra": "x"})]:
        sub = parse_submit_text(f"executable = x\ngetenv = {value}\n", source="s", cwd=tmp_path)
        assert sub.environment_dict(environ) == expected, value


def test_executable_is_relative_to_the_submit_directory_streams_to_initialdir(
        tmp_path: Path) -> None:
    text = "executable = bin/prog\ninitialdir = work\noutput = o.txt\nerror = /var/e.txt\nqueue\n"
    path = write(tmp_path, "s/t.sub", text)
    sub = parse_submit_file(path, cwd=tmp_path / "node")
    assert sub.executable_path == tmp_path / "node" / "bin" / "prog"
    assert sub.initialdir == tmp_path / "node" / "work"
    assert (sub.output, sub.error, sub.input) == (tmp_path / "node" / "work" / "o.txt",
                                                  Path("/var/e.txt"), None)
    assert parse_submit_file(path).cwd == tmp_path / "s"


def test_old_syntax_arguments_and_environment_in_a_file() -> None:
    sub = parse_submit_file(HERE / "old_env.sub")
    assert sub.arguments == ("one", '"two"', "'three'")
    assert dict(sub.environment) == {"one": "1", "two": "2",
                                     "three": "\"quotes have no 'special' meaning\"",
                                     " spaced ": " x"}
    assert sub.executable_path == HERE / "prog"


def test_vars_reach_the_submit_file_as_the_manual_shows() -> None:
    nodes = parse_dag(HERE / "vars.dag").nodes
    assert parse_node_submit(nodes["NodeA"]).arguments == (
        "Alberto Contador", '"Andy Schleck"', "Lance\\ Armstrong",
        "Vincenzo 'The Shark' Nibali", "!@#$%^&*()_-=+=[]{}?/")
    assert parse_node_submit(nodes["NodeB"]).arguments == (
        "Lance_Armstrong", '"Andreas_Kloden"', "Ivan_Basso", "Bernard_'The_Badger'_Hinault",
        "!@#$%^&*()_-=+=[]{}?/")
    assert parse_node_submit(nodes["NodeC"]).arguments == ("Nairo Quintana", "Chris Froome")


@pytest.mark.parametrize(("variables", "arguments", "output"), [
    ([], ("No", "variables", "prepended"), "results-C.out"),
    ([NodeVar("var1", "A", "prepend"), NodeVar("var2", "B", "append")],
     ("A", "was", "prepended"), "results-B.out"),
    ([NodeVar("var1", "A", "append"), NodeVar("var2", "B", "prepend")],
     ("No", "variables", "prepended"), "results-C.out"),
    ([("var1", "A"), ("var2", "B")], ("A", "was", "prepended"), "results-C.out"),
])
def test_prepend_and_append_vars(variables: list, arguments: tuple, output: str) -> None:
    sub = parse_submit_file(HERE / "conditional.sub", vars=variables)
    assert sub.arguments == arguments and sub.output == HERE / output


def test_default_append_places_unplaced_vars_last() -> None:
    sub = parse_submit_file(HERE / "conditional.sub", vars=[("var2", "B")], default_append=True)
    assert sub.output == HERE / "results-B.out"


def test_macro_expansion_rules() -> None:
    sub = parse_submit_file(HERE / "macros.sub", environ={"HOME_FOR_TEST": "/home/t"})
    # foo = snap $(foo) takes foo's earlier value; $(late) sees a later definition;
    # $(E:24) uses its default; a multi-line value; $ENV with and without default
    assert sub.arguments == ("snap", "bar", "on", "time", "24", "/home/t", "fallback")
    assert sub.input == HERE / "x" and sub.undefined_macros == ("nothing_here",)
    assert sub.output == HERE / "chosen.out"
    assert [(i.key, i.line, i.note) for i in sub.ignored] == [
        ("executable", 23, "after queue: it applies to no job")]


def test_dagman_macros_and_keys_in_any_case() -> None:
    node = parse_dag(HERE / "diamond.dag").nodes["C"]
    sub = parse_node_submit(node, dagman_macros={"ClusterId": 9})
    assert sub.arguments == ("hello", "from", "C") and sub.output == HERE / "C.out"
    assert [i.key for i in sub.ignored] == ["log"]
    text = "EXECUTABLE = a\nArguments = $(job) $(Cluster).$(PROCESS) $(JobId)\nQUEUE\n"
    sub = parse_submit_text(text, source="s", cwd=HERE, dagman_macros={"JOB": "n", "ClusterId": 3},
                            inline=False)
    assert sub.argv() == [str(HERE / "a"), "n", "3.0", "3.0"]


def test_undefined_cluster_is_reported_not_invented(tmp_path: Path) -> None:
    sub = parse_submit_text("executable = a\noutput = out.$(Cluster)\n", source="s", cwd=tmp_path)
    assert sub.output == tmp_path / "out." and sub.undefined_macros == ("ClusterId",)


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("executable = a\nqueue 5\n", 2, "queue 5: ecloud runs one job per node"),
    ("executable = a\nqueue input in (a, b)\n", 2, "ecloud runs one job per node"),
    ("executable = a\nN = 3\nqueue $(N)\n", 3, "queue 3: ecloud runs one job per node"),
    ("executable = a\nqueue\nqueue\n", 3, "a second queue statement"),
    ("executable = a\narguments = $$(OpSys)\nqueue\n", 2, "machine attribute"),
    ("executable = a\narguments = $INT(x)\nqueue\n", 2, "$INT() is not supported"),
    ("executable = a\narguments = $(b)\nb = $(c)\nc = $(b)\nqueue\n", 4, "b -> c -> b"),
    ("executable = a\nrequest_cpus = 1 + 1\nqueue\n", 2, "request_cpus: '1 + 1'"),
    ("executable = a\nrequest_memory = huge\nqueue\n", 2, "request_memory: 'huge'"),
    ("executable = a\narguments = \"it's\"\nqueue\n", 2, "arguments: a single quote is not closed"),
    ("executable = a\nenvironment = x\nqueue\n", 2, "environment: 'x' is not name=value"),
    ("executable = a\nif version >= 8.1\nendif\nqueue\n", 2, "if version"),
    ("executable = a\nif maybe\nendif\nqueue\n", 2, "not a simple boolean"),
    ("executable = a\nif true\nqueue\n", 2, "this if has no endif"),
    ("executable = a\nelse\nqueue\n", 2, "else without an open if"),
    ("executable = a\nendif\nqueue\n", 2, "endif without an open if"),
    ("executable = a\nthis is not a command\nqueue\n", 2, "cannot read 'this is not a command'"),
    ("executable = a\nerror : stop right here\nqueue\n", 2, "the submit file says: error : stop"),
    ("executable = a\ninclude : nowhere.sub\nqueue\n", 2, "cannot read the included file"),
    ("executable = a\ninclude : maker.sh |\nqueue\n", 2, "include of a command's output"),
    ("executable = a\nx @=end\nno end\nqueue\n", 2, "has no closing @end line"),
])
def test_submit_problems_name_their_line(tmp_path: Path, text: str, line: int,
                                         fragment: str) -> None:
    path = write(tmp_path, "t.sub", text)
    found = problems(parse_submit_file, path)
    assert any(p.startswith(f"{path}:{line}: ") and fragment in p for p in found), found


def test_submit_problems_of_the_whole_file(tmp_path: Path) -> None:
    path = write(tmp_path, "t.sub", "arguments = x\n")
    assert problems(parse_submit_file, path) == [
        f"{path}: no queue statement: condor_submit would queue no job (end the file with queue)",
        f"{path}: no executable: the submit description must name the program to run"]
    assert problems(parse_submit_file, tmp_path / "none.sub")[0].startswith(
        f"{tmp_path / 'none.sub'}: cannot read the submit file")


def test_queue_one_include_warning_and_continuations(tmp_path: Path) -> None:
    write(tmp_path, "common.inc", "request_cpus = 3\n")
    path = write(tmp_path, "t.sub", "include : common.inc\ninclude ifexist : absent.inc\n"
                                    "warning : just saying\nexecutable = \\\n# skipped comment\n"
                                    "  prog\n+Color = \"red\"\nqueue 1\n")
    sub = parse_submit_file(path)
    assert (sub.executable, sub.request_cpus) == ("prog", 3)
    assert [(i.key, i.line) for i in sub.ignored] == [("warning", 3), ("+Color", 7)]


def test_inline_descriptions_report_lines_of_the_dag_file(tmp_path: Path) -> None:
    path = write(tmp_path, "i.dag", "JOB A {\n  executable = x\n  request_cpus = many\n}\n")
    node = parse_dag(path).nodes["A"]
    assert problems(parse_node_submit, node) == [
        f"{path}:3: request_cpus: 'many' is not a whole number >= 1 (ecloud does not evaluate "
        "expressions)"]


def test_a_subdag_node_has_no_submit_description() -> None:
    inner = parse_dag(HERE / "directives.dag").nodes["Inner"]
    assert "has no submit description" in problems(parse_node_submit, inner)[0]


def test_random_macros(tmp_path: Path) -> None:
    text = ("executable = a\narguments = $RANDOM_CHOICE(x, y, z) $RANDOM_INTEGER(2, 8, 2)\n")
    for _ in range(20):
        choice, number = parse_submit_text(text, source="s", cwd=tmp_path).arguments
        assert choice in {"x", "y", "z"} and int(number) in {2, 4, 6, 8}
    found = problems(parse_submit_text, "executable = a\narguments = $RANDOM_INTEGER(5, 1)\n",
                     source="s", cwd=tmp_path)
    assert "expected min, max[, step]" in found[0]


def test_dollar_literals(tmp_path: Path) -> None:
    sub = parse_submit_text("executable = a\narguments = $(DOLLAR)x $$(DOLLARDOLLAR) $NOT(x) 5$\n",
                            source="s", cwd=tmp_path)
    assert sub.arguments == ("$x", "$$", "$NOT(x)", "5$")


# ====================================================================== rescue files


def test_rescue_numbering(tmp_path: Path) -> None:
    dag = write(tmp_path, "my.dag", "JOB A a.sub\n")
    assert newest_rescue(dag) is None
    assert next_rescue_path(dag) == tmp_path / "my.dag.rescue001"
    (tmp_path / "my.dag.rescue001").touch()
    (tmp_path / "my.dag.rescue002").touch()
    assert newest_rescue(dag) == tmp_path / "my.dag.rescue002"
    assert next_rescue_path(dag) == tmp_path / "my.dag.rescue003"
    (tmp_path / "my.dag.rescue005").touch()      # a gap is allowed
    (tmp_path / "my.dag.rescue0009").touch()     # not a name DAGMan makes
    (tmp_path / "other.dag.rescue007").touch()   # another DAG's
    assert newest_rescue(dag) == tmp_path / "my.dag.rescue005"
    assert newest_rescue(dag, max_rescue_num=4) == tmp_path / "my.dag.rescue002"
    assert next_rescue_path(dag, max_rescue_num=5) == tmp_path / "my.dag.rescue005"
    assert rescue_path(dag, 1000) == tmp_path / "my.dag.rescue1000"
    with pytest.raises(ValueError, match="max_rescue_num"):
        next_rescue_path(dag, max_rescue_num=0)


def test_write_and_read_a_rescue_file(tmp_path: Path) -> None:
    target = next_rescue_path(tmp_path / "goat.dag")
    written = write_rescue(target, "goat.dag", ["g1", "g2", "S+g3"], 1, failed_nodes=["montage"],
                           total_nodes=5, retries={"montage": (3, 42), "g1": (2, None)},
                           created=datetime(2012, 6, 2, 3, 8, 4, tzinfo=UTC))
    assert written == tmp_path / "goat.dag.rescue001"
    assert written.read_text().splitlines() == [
        "# Rescue DAG file, created after running",
        "#   the goat.dag DAG file",
        "# Created 6/2/2012 03:08:04 UTC",
        "# Rescue DAG version: 2.0.1 (partial)",
        "#",
        "# Total number of Nodes: 5",
        "# Nodes premarked DONE: 3",
        "# Nodes that failed: 1",
        "#   montage,<ENDLIST>",
        "",
        "DONE g1",
        "DONE g2",
        "DONE S+g3",
        "RETRY montage 3 UNLESS-EXIT 42",
        "RETRY g1 2",
    ]
    assert read_rescue(written) == {"g1", "g2", "S+g3"}
    assert [p.name for p in tmp_path.iterdir()] == ["goat.dag.rescue001"]  # no temporary left
    second = write_rescue(next_rescue_path(tmp_path / "goat.dag"), "goat.dag", {"b", "a"}, 0)
    assert second.name == "goat.dag.rescue002"
    text = second.read_text()
    assert "DONE a\nDONE b\n" in text and "#   <ENDLIST>" in text and "Created" in text


def test_reading_a_rescue_file_tolerates_comments_and_retry_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "x.dag.rescue001", "# header\n\n  DONE A\n# 1 of 3 retries\n"
                                              "RETRY B 3 UNLESS-EXIT 2\ndone C\n")
    assert read_rescue(path) == {"A", "C"}
    assert "cannot read the rescue file" in problems(read_rescue, tmp_path / "none")[0]
    full = write(tmp_path, "y.dag.rescue001", "JOB A a.sub DONE\nDONE\n")
    assert problems(read_rescue, full) == [
        f"{full}:1: 'JOB' has no place in a partial rescue file (only DONE and RETRY lines; "
        "a full rescue DAG is a DAG file of its own)",
        f"{full}:2: DONE takes one node name: DONE NodeName"]


def test_a_rerun_uses_the_newest_rescue_file(tmp_path: Path) -> None:
    dag_path = write(tmp_path, "d.dag", "JOB A a.sub\nJOB B a.sub\nJOB C a.sub\n"
                                        "PARENT A CHILD B\nPARENT B CHILD C\n")
    dag, used = load_dag(dag_path)
    assert used is None and not any(n.done for n in dag.nodes.values())
    write_rescue(next_rescue_path(dag_path), dag_path, ["A"], 1)
    write_rescue(next_rescue_path(dag_path), dag_path, ["A", "B"], 1)
    dag, used = load_dag(dag_path)
    assert used == tmp_path / "d.dag.rescue002"
    assert {n.name for n in dag.nodes.values() if n.done} == {"A", "B"}
    dag, used = load_dag(dag_path, rescue_from=1)
    assert used == tmp_path / "d.dag.rescue001"
    assert {n.name for n in dag.nodes.values() if n.done} == {"A"}
    dag, used = load_dag(dag_path, force=True)
    assert used is None and not any(n.done for n in dag.nodes.values())
    assert "rescue file 7 does not exist" in problems(load_dag, dag_path, rescue_from=7)[0]


def test_applying_a_rescue_file_checks_its_node_names(tmp_path: Path) -> None:
    dag = parse_dag(write(tmp_path, "d.dag", "JOB A a.sub\nFINAL F f.sub\n"))
    rescue = write(tmp_path, "d.dag.rescue001", "# x\nDONE A\nDONE Gone\nDONE F\n")
    assert problems(apply_rescue, dag, rescue) == [
        f"{rescue}:3: DONE names node 'Gone', which {dag.path} does not have (comment the line "
        "out if the node was removed)",
        f"{rescue}:4: the FINAL node 'F' cannot be DONE"]
    ok = write(tmp_path, "d.dag.rescue002", "DONE A\n")
    applied = apply_rescue(dag, ok)
    assert applied.nodes["A"].done and not dag.nodes["A"].done
    assert isinstance(applied.nodes["F"], Node) and applied.edges == dag.edges


def test_do_rescue_from_retires_the_later_rescue_files(tmp_path: Path) -> None:
    dag = tmp_path / "my.dag"
    for n in (1, 2, 3, 4):
        rescue_path(dag, n).touch()
    renamed = retire_rescues_after(dag, 2)
    assert renamed == [tmp_path / "my.dag.rescue003.old", tmp_path / "my.dag.rescue004.old"]
    assert newest_rescue(dag) == tmp_path / "my.dag.rescue002"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "my.dag.rescue001", "my.dag.rescue002", "my.dag.rescue003.old", "my.dag.rescue004.old"]


def test_problem_messages_always_start_with_a_location(tmp_path: Path) -> None:
    """Whatever the problem, the operator is told where: ``file:line:``."""
    path, found = dag_problems(tmp_path, "JOB A a.sub\nRETRY A\nVARS A x\nBOGUS\n")
    assert all(re.match(re.escape(str(path)) + r":\d+: ", p) for p in found)
    assert len(found) == 3


def test_macros_that_double_each_other_are_refused_early(tmp_path: Path) -> None:
    """(hostile tester) 40 macros each twice the one before would expand to
    2**40 times the first: it took minutes and gigabytes before the check."""
    lines = ["executable = /bin/echo", "a0 = " + "x" * 50]
    lines += [f"a{i} = $(a{i - 1})$(a{i - 1})" for i in range(1, 40)]
    submit = tmp_path / "bomb.sub"
    submit.write_text("\n".join([*lines, "arguments = $(a39)", "queue", ""]))
    found = problems(parse_submit_file, submit)
    assert len(found) == 1 and found[0].startswith(f"{submit}:")  # the line of the macro that
    assert found[0].endswith(": macros expand to more than 1,048,576 characters")  # grew past
