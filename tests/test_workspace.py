"""Git side of a run, checked with real git: trial refs, commit messages, identity, the user's checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from scenariokit import Scenario

from nlkit import PREPARE, PROGRAM, TRAIN, Project, commit_message, git, idea, make_project, one_line_error, sub


def _refs(proj: Project, tag: str = "t") -> dict[int, str]:
    out = proj.git("for-each-ref", "--format=%(refname) %(objectname)", f"refs/nightlab/{tag}/")
    return {int(name.rsplit("-", 1)[1]): sha for name, sha in (line.split() for line in out.splitlines())}


def test_every_trial_commit_is_reachable_under_its_ref(scenario: Scenario) -> None:
    refs = _refs(scenario.proj)
    committed = {r["n"]: r["commit_sha"] for r in scenario.ledger if r["commit_sha"]}
    assert refs == committed
    assert set(committed) == {0, 1, 2, 3, 4, 5, 6, 7, 11, 12}  # rejected ideas (8-10) never became commits
    for n, sha in committed.items():
        assert scenario.proj.git("cat-file", "-t", sha) == "commit"
        if n > 0:  # each trial commit holds its own edit
            assert "train.py" in scenario.proj.git("show", "--name-only", "--format=", sha).split()


def test_commit_message_format(scenario: Scenario) -> None:
    proj = scenario.proj
    assert commit_message(proj, "refs/nightlab/t/trial-1").splitlines() == [
        "trial 1: raise LR to 0.3",
        "",
        "val_loss: 1.00000 (best 1.04000)",
        "delta: -0.04000",
        "status: keep",
        "phase: 1 Hyperparameters",
    ]
    assert commit_message(proj, "refs/nightlab/t/trial-2").splitlines() == [
        "trial 2: lower LR to 0.0",
        "",
        "val_loss: 1.09000 (best 1.00000)",
        "delta: +0.09000",
        "status: discard",
        "phase: 1 Hyperparameters",
    ]
    crash = commit_message(proj, "refs/nightlab/t/trial-4").splitlines()
    assert crash[0] == "trial 4: exit with code 3"
    assert crash[1] == ""
    assert crash[2].startswith("val_loss: ")
    assert "status: crash (exit code 3)" in crash
    for n in (1, 2, 3, 4, 5, 6, 7, 11, 12):  # no trial is left saying "running"
        assert "status: running" not in commit_message(proj, f"refs/nightlab/t/trial-{n}")


def test_nightlab_commits_as_itself_without_a_git_identity(scenario: Scenario) -> None:
    proj = scenario.proj
    assert proj.git("config", "user.name", check=False) == ""  # really no identity anywhere
    for n in (1, 2, 4, 12):
        who = proj.git("log", "-1", "--format=%an <%ae>|%cn <%ce>", f"refs/nightlab/t/trial-{n}")
        assert who == "nightlab <nightlab@localhost>|nightlab <nightlab@localhost>"


def test_the_users_checkout_is_untouched(scenario: Scenario) -> None:
    before, after = scenario.before, scenario.after
    assert after["branch"] == before["branch"] == "main"
    assert after["head"] == before["head"]
    assert after["files"] == before["files"]  # train.py, prepare.py, nightlab.toml, .gitignore, ideas.toml...
    assert after["status"] == before["status"] == "?? ideas.toml"
    assert ".nightlab" not in after["status"]
    assert sorted(after["branches"].split()) == sorted([*before["branches"].split(), "nightlab/t"])
    # the state dir is hidden with info/exclude, not by editing the user's .gitignore
    exclude = Path(scenario.proj.git("rev-parse", "--git-path", "info/exclude"))
    exclude = exclude if exclude.is_absolute() else scenario.proj.dir / exclude
    assert "/.nightlab/" in exclude.read_text().splitlines()


def test_the_worktree_is_on_the_branch_and_clean(scenario: Scenario) -> None:
    wt = scenario.proj.worktree()
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=wt, env=scenario.proj.env,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert branch == "nightlab/t"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=wt, env=scenario.proj.env,
                            capture_output=True, text=True, check=True).stdout
    assert status == ""
    assert (wt / "prepare.py").read_text() == PREPARE


def test_the_branch_moves_once_a_keep_and_never_for_any_other_trial(scenario: Scenario) -> None:
    """A trial's commit is on the branch only once kept: a discard, a crash or an invalid run moves no ref back
    (and the branch's reflog is the night's keeps)."""
    rows = scenario.ledger
    moves = scenario.proj.git("log", "-g", "--format=%H", "refs/heads/nightlab/t").split()[::-1]
    assert moves == [rows[0]["commit_sha"]] + [r["commit_sha"] for r in rows if r["status"] == "keep"]
    assert len(moves) == 2


def test_a_project_in_a_subdirectory_of_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    proj = Project(repo / "ml", tmp_path / "home")
    proj.dir.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, env=proj.env, check=True)
    (repo / "README.md").write_text("other things live here\n")
    proj.write("train.py", TRAIN)
    proj.write("prepare.py", PREPARE)
    proj.write("program.md", PROGRAM)
    proj.config()
    proj.commit_all()
    proj.ideas(idea("raise LR", sub("LR = 0.1", "LR = 0.3")),
               idea("touch prepare", sub("prepared", "x", file="prepare.py")),
               idea("lower LR", sub("LR = 0.3", "LR = 0.0")))
    proj.run("--max-trials", "3")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "rejected", "discard"]
    assert "prepare.py" in proj.trial(2)["reason"]
    wt = proj.state() / "worktree"
    assert "LR = 0.3" in (wt / "ml" / "train.py").read_text()  # the project sits at the same place in the worktree
    assert (wt / "ml" / "prepare.py").read_text() == PREPARE
    assert proj.git("rev-parse", "nightlab/t") == proj.trial(1)["commit_sha"]
    root_status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                                 env=proj.env, capture_output=True, text=True, check=True).stdout
    assert root_status.splitlines() == ["?? ml/ideas.toml"]


def test_a_repository_identity_is_used_when_configured(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.git("config", "user.name", "Ada")
    proj.git("config", "user.email", "ada@example.com")
    proj.run("--max-trials", "1")
    assert proj.git("log", "-1", "--format=%an <%ae>", "nightlab/t") == "Ada <ada@example.com>"


def test_a_fresh_tag_whose_branch_already_exists_is_refused(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.git("branch", "nightlab/t")
    line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert "nightlab/t" in line and "already exists" in line


def test_a_users_commit_signing_config_does_not_stop_the_loop(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.git("config", "commit.gpgsign", "true")
    proj.git("config", "gpg.program", "false")  # a signer that always fails (no key, no agent, no tty)
    proc = proj.run("--max-trials", "1", ok=False)
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_a_worktree_lent_out_is_reset_again_and_edits_are_seen_by_one_status(tmp_path: Path) -> None:
    """The trial's git shortcuts: a reset skipped only where nightlab knows the worktree clean, and the edits (new,
    changed and deleted files) read from one `git status`; a refused edit keeps the diff the agent left."""
    from nightlab.errors import EditRejected
    from nightlab.workspace import Workspace

    proj = make_project(tmp_path)
    proj.run("--max-trials", "0")
    ws = Workspace(proj.dir, "t", ["train.py"], "scratchpad.md")
    head = ws.head()
    assert head == proj.git("rev-parse", "nightlab/t")
    ws.reset(head)
    ws.lend()  # the agent (or a run) has it now
    (ws.dir / "train.py").write_text(TRAIN.replace("LR = 0.1", "LR = 0.2"))
    ws.reset(head, unless_clean=True)  # lent since: reset for real
    assert (ws.dir / "train.py").read_text() == TRAIN

    ws.lend()
    (ws.dir / "train.py").write_text(TRAIN.replace("LR = 0.1", "LR = 0.2"))
    (ws.dir / "notes.txt").write_text("new\n")
    (ws.dir / "prepare.py").unlink()
    assert ws.changed_files() == {"notes.txt": False, "prepare.py": True, "train.py": True}
    with pytest.raises(EditRejected) as refused:
        ws.verify_edits()
    assert "LR = 0.2" in refused.value.diff and "prepare.py" in refused.value.diff
    assert (ws.dir / "prepare.py").read_text() == PREPARE and not (ws.dir / "notes.txt").exists()
    sha, patch = ws.commit("trial 1: LR 0.2", ["train.py"])
    assert sha == ws.holds() and "+LR = 0.2" in patch
    assert ws.head() == head == proj.git("rev-parse", "nightlab/t")  # the branch moves when the trial is kept
    amended = ws.amend(sha, "trial 1: LR 0.2\n\nstatus: keep")
    assert proj.git("rev-parse", f"{amended}^{{tree}}") == proj.git("rev-parse", f"{sha}^{{tree}}")
    assert proj.git("rev-parse", f"{amended}^") == head and ws.head() == head and ws.holds() == sha
    ws.reset(amended)  # kept
    assert ws.holds() == ws.head() == amended == proj.git("rev-parse", "nightlab/t")
    assert git("status", "--porcelain", cwd=ws.dir, env=proj.env) == ""
