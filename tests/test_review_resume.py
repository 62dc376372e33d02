"""Review: resume and setup consistency, odd repositories, bad input (real git, real CLI, real SQLite)."""

from __future__ import annotations

import shutil
from pathlib import Path

from nlkit import idea, make_project, one_line_error, sub

IDEAS = [idea("raise LR", sub("LR = 0.1", "LR = 0.3")), idea("add a bonus", sub("BONUS = 0.0", "BONUS = 0.5"))]


def test_a_fresh_tag_whose_worktree_could_not_be_made_can_be_run_again(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    junk = proj.worktree() / "left-over.txt"  # git refuses to add a worktree into a non-empty directory
    junk.parent.mkdir(parents=True)
    junk.write_text("x\n")
    failed = proj.run("--max-trials", "1", ok=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "git worktree failed" in failed.stderr  # names the git command, not its "-c" option
    assert junk.read_text() == "x\n"  # what nightlab did not make, it does not delete
    assert proj.git("branch", "--list", "nightlab/*") == ""  # no half-made tag is left behind
    junk.unlink()
    proj.run("--max-trials", "1")  # before the fix: "branch nightlab/t already exists"
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_a_users_failing_post_checkout_hook_does_not_stop_the_run(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    hook = proj.write("hooks/post-checkout", "#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    proj.commit_all("hooks")
    proj.git("config", "core.hooksPath", "hooks")
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_a_branch_named_nightlab_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    proj.git("branch", "nightlab")
    line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert "'nightlab'" in line
    assert proj.git("branch", "--list", "nightlab/*") == ""


def test_a_config_that_is_not_text_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    (proj.dir / "nightlab.toml").write_bytes(b"\xff\xfe[run]\n")
    line = one_line_error(proj.nl("status"))
    assert "nightlab.toml" in line


def test_resuming_with_a_changed_budget_is_refused(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    proj.run("--max-trials", "0")
    line = one_line_error(proj.run("--max-trials", "1", "--budget", "2", ok=False))
    assert "budget_s" in line and "changed" in line
    assert [r["n"] for r in proj.ledger()] == [0]
    proj.run("--max-trials", "1")  # the original budget resumes normally
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_a_tag_whose_worktree_was_deleted_resumes(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    proj.run("--max-trials", "1")
    shutil.rmtree(proj.worktree())
    proj.run("--max-trials", "2")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "keep"]
    assert proj.git("rev-parse", "nightlab/t") == proj.ledger()[-1]["commit_sha"]


def test_a_tag_git_cannot_use_as_a_branch_name_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    for tag in ("a..b", "x.lock", "x."):
        line = one_line_error(proj.nl("run", "--tag", tag, "--max-trials", "0"))
        assert "--tag" in line
    assert proj.git("branch", "--list", "nightlab/*") == ""


def test_an_editable_path_written_with_dot_slash_is_the_same_file(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"project": {"editable": ["./train.py"]}}, ideas=IDEAS)
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]  # before the fix: rejected, "changed train.py"


def test_an_editable_path_outside_the_project_is_a_one_line_usage_error(tmp_path: Path) -> None:
    for i, path in enumerate(["/etc/hostname", "../elsewhere.py"]):
        proj = make_project(tmp_path / str(i), config={"project": {"editable": [path]}}, ideas=IDEAS)
        line = one_line_error(proj.run("--max-trials", "1", ok=False))
        assert path in line


def test_a_resumed_optuna_agent_learns_the_baseline_it_was_never_told(tmp_path: Path) -> None:
    # A baseline recorded without the optuna agent being told (here: the tag began with another agent; a kill
    # between the ledger save and observe() leaves the same state) must reach the study on resume.
    import optuna

    proj = make_project(tmp_path, ideas=IDEAS)
    proj.run("--max-trials", "0")
    proj.run("--max-trials", "0", "--agent", "optuna")
    study = optuna.load_study(study_name="nightlab", storage=f"sqlite:///{proj.state() / 'optuna.sqlite'}")
    baselines = [t for t in study.trials if t.user_attrs.get("nightlab_baseline")]
    assert len(baselines) == 1 and baselines[0].value == proj.trial(0)["metric"]
    proj.run("--max-trials", "0", "--agent", "optuna")  # told again: still one baseline point
    study = optuna.load_study(study_name="nightlab", storage=f"sqlite:///{proj.state() / 'optuna.sqlite'}")
    assert len([t for t in study.trials if t.user_attrs.get("nightlab_baseline")]) == 1


def test_a_named_program_file_that_is_missing_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"project": {"program": "progam.md"}}, ideas=IDEAS)  # a typo
    line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert "progam.md" in line and "not found" in line
    assert proj.git("branch", "--list", "nightlab/*") == ""


def test_a_tag_resumes_after_the_project_directory_was_moved(tmp_path: Path) -> None:
    from nlkit import TRAIN

    train = TRAIN.replace("seed = int", 'assert open("data/train/x.txt").read() == "x"\nseed = int')
    proj = make_project(tmp_path, train=train, config={"data": {"train": ["data/train"]}}, ideas=IDEAS)
    proj.write("data/train/x.txt", "x")  # ignored by .gitignore: data, not code
    proj.run("--max-trials", "1")
    moved = tmp_path / "moved"
    shutil.move(str(proj.dir), str(moved))
    proj.dir = moved
    proj.run("--max-trials", "2")  # before the fix: "git reset failed ... not a git repository"
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "keep"]
    assert proj.git("rev-parse", "nightlab/t") == proj.ledger()[-1]["commit_sha"]


def test_init_example_into_a_file_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    line = one_line_error(proj.nl("init", "train.py", "--example", "quickstart"))
    assert "train.py" in line


def test_a_baseline_fixed_and_committed_after_it_failed_resumes_the_same_tag(tmp_path: Path) -> None:
    from nlkit import TRAIN

    proj = make_project(tmp_path, train=TRAIN.replace("seed = int", "raise SystemExit(3)\nseed = int"), ideas=IDEAS)
    failed = proj.nl("run", "--max-trials", "1")  # no --tag: the default tag, as a new user runs it
    assert failed.returncode == 1 and "fix it" in failed.stderr
    proj.write("train.py", TRAIN)  # the fix the message asks for, committed
    proj.commit_all("fix the training script")
    resumed = proj.nl("run", "--max-trials", "1")  # before the fix: the old, broken commit failed again
    assert resumed.returncode == 0, resumed.stderr
    assert [r["status"] for r in proj.ledger("run")] == ["baseline", "keep"]
    assert proj.ledger("run")[0]["commit_sha"] == proj.git("rev-parse", "main")


def test_an_editable_file_with_a_non_ascii_name_can_be_changed(tmp_path: Path) -> None:
    from nlkit import TRAIN

    proj = make_project(tmp_path, train="from modèle import *\n" + TRAIN.replace("LR = 0.1\n", ""),
                        files={"modèle.py": "LR = 0.1\n"}, config={"project": {"editable": ["modèle.py"]}},
                        ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3", file="modèle.py"))])
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]  # before the fix: rejected, "mod\303\250le.py"


def test_a_tag_whose_state_was_deleted_names_how_to_start_it_over(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    proj.run("--max-trials", "0")
    shutil.rmtree(proj.state())  # the user deletes .nightlab/t to start the tag over
    line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert "resume it" not in line  # before the fix: advice that cannot be followed (there is no ledger)
    proj.git("worktree", "prune")
    proj.git("branch", "-D", "nightlab/t")  # the advice in the message works
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_a_baseline_that_failed_on_a_wrong_metric_name_resumes_once_the_config_is_fixed(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"metric": {"name": "val_los"}}, ideas=IDEAS)  # a typo: metric missing
    assert proj.run("--max-trials", "1", ok=False).returncode == 1
    proj.config({"metric": {"name": "val_loss"}})
    proj.commit_all("fix the metric name")
    proj.run("--max-trials", "1")  # before the fix: refused, "metric changed since this tag started"
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_the_users_post_commit_and_post_checkout_hooks_do_not_run_for_nightlabs_own_git_work(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3")),
                                         idea("edit the evaluation", sub("prepared", "tampered", file="prepare.py"))])
    marker = tmp_path / "hooks-ran"
    for name in ("post-commit", "post-checkout"):
        proj.write(f"hooks/{name}", f"#!/bin/sh\necho {name} >> {marker}\n").chmod(0o755)
    proj.commit_all("hooks")
    proj.git("config", "core.hooksPath", "hooks")
    proj.run("--max-trials", "2")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "rejected"]
    assert not marker.exists(), marker.read_text()  # before the fix: post-checkout once, post-commit per commit


def test_a_program_md_that_is_not_utf8_does_not_crash_the_run(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    (proj.dir / "program.md").write_bytes("# Programme\n\nMinimisez la perte (é)\n".encode("latin-1"))
    proj.commit_all("a program written in latin-1")
    proc = proj.run("--max-trials", "1", ok=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr  # before the fix: UnicodeDecodeError
    assert "Minimisez" in (proj.state() / "runs/1/brief.md").read_text()


def test_a_ledger_that_is_not_a_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    proj.state().mkdir(parents=True)
    (proj.state() / "ledger.sqlite").write_text("garbage" * 100)
    proc = proj.nl("status", "--tag", "t")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "ledger.sqlite" in proc.stderr


def test_a_scratchpad_in_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"project": {"scratchpad": "notes/scratchpad.md"}}, ideas=IDEAS)
    proc = proj.run("--max-trials", "1", ok=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr  # before the fix: FileNotFoundError
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]
    assert proj.git("show", "nightlab/t:notes/scratchpad.md").startswith("# Scratchpad")


def test_a_tag_whose_branch_was_deleted_resumes_from_the_best_trial(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[*IDEAS, idea("lower LR", sub("LR = 0.3", "LR = 0.25"))])
    proj.run("--max-trials", "1")
    best = proj.trial(1)["commit_sha"]
    proj.git("worktree", "remove", "--force", str(proj.worktree()))
    proj.git("branch", "-D", "nightlab/t")
    proc = proj.run("--max-trials", "2")  # before: "branch nightlab/t is missing; cannot resume"
    assert "branch nightlab/t was missing: made again at the best trial's commit" in proc.stderr
    rows = proj.ledger()
    assert [r["status"] for r in rows] == ["baseline", "keep", "keep"] and rows[2]["parent"] == best
    assert proj.git("rev-parse", "nightlab/t") == rows[2]["commit_sha"]


def test_nightlab_run_from_inside_a_tags_worktree_finds_the_project(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS)
    proj.run("--max-trials", "1")
    status = proj.nl("status", "--tag", "t", "--json", cwd=proj.worktree())
    assert status.returncode == 0, status.stderr  # before: "no ledger" (the worktree's copy was taken as the project)
    assert '"trials": 1' in status.stdout
    assert not (proj.worktree() / ".nightlab").exists()


def test_trial_takes_a_budget(tmp_path: Path) -> None:
    proj = make_project(tmp_path, train='import os\nprint("val_loss:", os.environ["NIGHTLAB_BUDGET_S"])\n'
                        'print("peak_memory_gb: 0.1")\n')
    proc = proj.nl("trial", "--budget", "7")
    assert proc.returncode == 0, proc.stderr
    assert "val_loss: 7" in proc.stdout
    assert "--budget" in one_line_error(proj.nl("trial", "--budget", "1000"))  # past timeout_s: refused, one line
