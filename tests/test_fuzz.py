"""Fuzzing what comes from outside: nightlab.toml, a run's metric output (log lines and metrics.json of any shape),
ideas.toml, and an API agent's tool-call arguments. Every case ends in a clear one-line error or a trial status:
never another exception (a traceback for the user), never a hang. The last two push metric output and
configs through a whole `nightlab run`: the ledger, refs and views stay consistent whatever the run printed."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nightlab import config, metrics
from nightlab.agents import scripted, toolloop
from nightlab.errors import AgentFailed, TrialFailed, UsageError
from nightlab.types import RunResult
from nlkit import BASE_CONFIG, check_consistent, content, idea, make_project, merged, one_line_error, toml_dumps

# FUZZ_EXAMPLES=2000 for a longer search than CI's
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                                  max_size=4),
                           max_leaves=12)
toml_values = st.recursive(st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
                               st.from_regex(r"[a-z_]{1,8}", fullmatch=True), kids, max_size=3), max_leaves=6)
keys = st.sampled_from([f"{s}.{k}" for s, v in BASE_CONFIG.items() for k in v]
                       + ["run.prepare", "keep.threshold", "keep.confirm", "executor.slots", "sandbox.memory_gb",
                          "metric.goal", "project.scratchpad", "phases.trials", "data.train", "agent.max_cost_usd",
                          "run.nope", "nope.key"])


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


# -- nightlab.toml ------------------------------------------------------------------------------------------
@FUZZ
@given(changes=st.lists(st.tuples(keys, toml_values), max_size=4))
def test_a_mutated_config_loads_or_says_what_is_wrong_in_one_line(tmp_path: Path, changes: list) -> None:
    overrides: dict = {}
    for key, value in changes:
        section, name = key.split(".")
        overrides.setdefault(section, {})[name] = value
    path = tmp_path / "nightlab.toml"
    path.write_text(toml_dumps(merged(BASE_CONFIG, overrides)))
    try:
        cfg = config.load(path)
    except UsageError as e:
        assert str(path) in one_line(e)
        return
    assert cfg.metric.name


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_as_config_loads_or_fails_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "nightlab.toml"
    path.write_text(text, errors="surrogateescape")
    try:
        config.load(path)
    except UsageError as e:
        one_line(e)


# -- metric output ------------------------------------------------------------------------------------------
metric_lines = st.lists(st.one_of(
    st.text(max_size=60),
    st.builds(lambda n, v: f"{n}: {v}", st.sampled_from(["val_loss", "peak_memory_gb", "val_loss_fold0", "x"]),
              st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                        st.sampled_from(["nan", "-inf", "1e999", "1" * 400, "0x10", "1,5"])))), max_size=20)


@FUZZ
@given(lines=metric_lines, data=json_values, raw=st.sampled_from(["", '{"val_loss": 1, "val_loss": "a"}',
                                                                   '{"val_loss": 1e999}', "[1]", "{", "\x00"]),
       use_raw=st.booleans())
def test_any_metric_output_gives_values_or_a_trial_status(tmp_path: Path, lines: list[str], data: object, raw: str,
                                                         use_raw: bool) -> None:
    log = tmp_path / "run.log"
    log.write_text("\n".join(lines), errors="surrogateescape")
    if use_raw:
        (tmp_path / "metrics.json").write_text(raw)
    else:
        (tmp_path / "metrics.json").write_text(json.dumps(data if not isinstance(data, dict) else
                                                          {"val_loss": data, **data}, default=str))
    try:
        values = metrics.read(RunResult(0, 1.0, False, log), tmp_path, "val_loss")
        metrics.check_constraints(values, [config.Constraint(name="peak_memory_gb", max=1.0)])
    except TrialFailed as e:
        one_line(e)
        return
    assert math.isfinite(values["val_loss"])


# -- ideas.toml ---------------------------------------------------------------------------------------------
idea_tables = st.dictionaries(st.sampled_from(["description", "hypothesis", "edit", "other"]),
                              toml_values | st.lists(st.dictionaries(
                                  st.sampled_from(["file", "search", "replace", "content", "patch", "x"]),
                                  toml_values | st.sampled_from(["train.py", "../x.py", "/etc/passwd", "LR = 0.1"]),
                                  max_size=4), max_size=2), max_size=4)


@FUZZ
@given(ideas=st.lists(idea_tables, max_size=3), junk=st.sampled_from(["", "x = 1\n", "[[idea]\n", "idea = 3\n"]))
def test_any_idea_queue_gives_an_edit_a_rejection_or_a_one_line_error(tmp_path: Path, ideas: list[dict],
                                                                      junk: str) -> None:
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    (work / "train.py").write_text("LR = 0.1\n")
    queue = tmp_path / "ideas.toml"
    queue.write_text(junk + "".join("[[idea]]\n" + toml_dumps({"x": i})[len("[x]\n"):] for i in ideas))
    try:
        loaded = scripted.load_queue(queue)
    except UsageError as e:
        one_line(e)
        return
    for item in loaded:
        try:
            scripted._describe(item)
            for edit in item.get("edit", []) if isinstance(item.get("edit"), list) else [item.get("edit")]:
                scripted.apply_edit(work, edit)
        except AgentFailed as e:
            one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ideas.toml", "w"]  # nothing written outside


# -- an API agent's tool calls ------------------------------------------------------------------------------
@FUZZ
@given(name=st.sampled_from([*toolloop.SCHEMAS, "shell", ""]), raw=st.one_of(
    st.text(max_size=80), json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["path", "old", "new", "content", "description", "hypothesis", "x"]),
                    json_values | st.sampled_from(["train.py", "../../etc/passwd", ".git/config", "/tmp", "."]),
                    max_size=4).map(json.dumps)))
def test_any_tool_call_ends_in_a_result_for_the_model(tmp_path: Path, name: str, raw: str) -> None:
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    (work / "train.py").write_text("LR = 0.1\n")
    tools = toolloop.FileTools(work, ["train.py"], "scratchpad.md")
    text, is_error = tools.call(name, toolloop.parse_args(raw))
    assert isinstance(text, str) and isinstance(is_error, bool)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


@pytest.mark.parametrize("raw", ['{"val_loss": ' + "1" * 400 + "}", '{"val_loss": [' + "9" * 400 + ", 1]}",
                                 '{"val_loss": [1.7e308, 1.7e308]}',
                                 '{"val_loss_fold0": 1.7e308, "val_loss_fold1": 1.7e308}'])
def test_a_metric_beyond_a_float_is_a_crash(tmp_path: Path, raw: str) -> None:
    (tmp_path / "run.log").write_text("")
    (tmp_path / "metrics.json").write_text(raw)
    with pytest.raises(TrialFailed, match="val_loss"):
        metrics.read(RunResult(0, 1.0, False, tmp_path / "run.log"), tmp_path, "val_loss")


def test_huge_folds_with_a_usable_mean_have_no_std(tmp_path: Path) -> None:
    (tmp_path / "run.log").write_text("")
    (tmp_path / "metrics.json").write_text('{"val_loss": [1.7e308, -1.7e308, 1.7e308]}')
    values = metrics.read(RunResult(0, 1.0, False, tmp_path / "run.log"), tmp_path, "val_loss")
    assert math.isfinite(values["val_loss"]) and "val_loss_std" not in values


# -- the same metric output through a whole `nightlab run` ----------------------------------------------------
# A session per example (trials are runs, not function calls), so few examples and no shrinking: a failure
# prints its example, and FUZZ_RUNS=20 searches longer.
RUNS = settings(max_examples=int(os.environ.get("FUZZ_RUNS", "3")), deadline=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))
RAW = ["", '{"val_loss": 1, "val_loss": "a"}', '{"val_loss": 1e999}', "[1]", "{", "\x00", '{"val_loss": 0.5}']
run_outputs = st.tuples(metric_lines, json_values.map(lambda d: json.dumps({"val_loss": d} if not isinstance(d, dict)
                                                                         else {"val_loss": d, **d}, default=str))
                        | st.sampled_from(RAW), st.booleans())


def _printer(lines: list[str], blob: str, write: bool) -> str:
    """A train.py that prints `lines` and, if `write`, leaves `blob` as its metrics.json."""
    out = ("import os, sys\n"
           f"sys.stdout.buffer.write({chr(10).join(lines)!a}.encode('utf-8', 'surrogateescape'))\n")
    if write:
        out += f"open(os.path.join(os.environ['NIGHTLAB_RUN_DIR'], 'metrics.json'), 'w').write({blob!a})\n"
    return out


@RUNS
@given(cases=st.lists(run_outputs, min_size=10, max_size=10))
def test_any_metric_output_through_a_whole_run_ends_in_recorded_trials(tmp_path: Path, cases: list) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # one project per example
    ideas = [idea(f"case {i}", content(_printer(*case))) for i, case in enumerate(cases)]
    proj = make_project(root, ideas=ideas)
    proj.commit_all("ideas")
    proc = proj.run("--max-trials", str(len(cases)), ok=False, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    rows = check_consistent(proj)  # every trial once, refs, branch and user checkout as a clean run leaves them
    assert [r["n"] for r in rows] == list(range(len(cases) + 1))
    assert all(r["metric"] is None or math.isfinite(r["metric"]) for r in rows)
    assert all(r["status"] in {"baseline", "keep", "discard", "crash", "invalid"} for r in rows), rows
    log = json.loads(proj.nl("log", "--json", "--tag", "t").stdout)
    assert [t["n"] for t in log] == [r["n"] for r in rows]
    assert len((proj.state() / "results.tsv").read_text().splitlines()) == len(rows) + 1
    assert json.loads(proj.nl("status", "--json", "--tag", "t").stdout)["trials"] == len(cases)  # the baseline is not a trial


@RUNS
@given(changes=st.lists(st.tuples(keys, toml_values), min_size=1, max_size=3))
def test_a_mutated_config_through_the_cli_runs_or_fails_in_one_line(tmp_path: Path, changes: list) -> None:
    overrides: dict = {}
    for key, value in changes:
        section, name = key.split(".")
        overrides.setdefault(section, {})[name] = value
    proj = make_project(Path(tempfile.mkdtemp(dir=tmp_path)), config=overrides)
    proc = proj.run("--max-trials", "0", ok=False, timeout=300)
    if proc.returncode == 2:
        assert "nightlab.toml" in one_line_error(proc)
    else:
        assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr  # 1: the baseline failed
        assert [r["n"] for r in proj.ledger()] == [0]
