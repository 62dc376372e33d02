"""What an agent may change in a trial's worktree (edits.py), on a real worktree and real git: a change to the
scratchpad alone is no edit, a deleted editable file is one, anything else is refused in one line and put back
(new directories removed, a link removed without touching what it points at), and ignored files are no edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlab.errors import EditRejected
from nightlab.workspace import Workspace
from nlkit import PREPARE, TRAIN, make_project


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    proj = make_project(tmp_path)
    ws = Workspace(proj.dir, "t", ["train.py"], "scratchpad.md")
    ws.open(fresh=True)
    ws.lend()  # the agent has it now
    return ws


def test_notes_alone_are_no_edit_and_are_kept(ws: Workspace) -> None:
    (ws.dir / "scratchpad.md").write_text("tried nothing yet\n")
    with pytest.raises(EditRejected, match="^no change to train.py$"):
        ws.verify_edits()
    assert (ws.dir / "scratchpad.md").read_text() == "tried nothing yet\n"  # notes are never taken back


def test_a_deleted_editable_file_is_an_edit(ws: Workspace) -> None:
    (ws.dir / "train.py").unlink()
    (ws.dir / "scratchpad.md").write_text("train.py was not needed\n")
    assert ws.verify_edits() == {"scratchpad.md": False, "train.py": True}
    sha, _ = ws.commit("trial 1: no train.py", ["train.py", "scratchpad.md"])
    assert ws.store.blob(sha, "train.py") is None and ws.store.blob(sha, "scratchpad.md") is not None


def test_new_files_outside_the_editable_ones_are_refused_in_one_line_and_removed(ws: Workspace) -> None:
    (ws.dir / "train.py").write_text(TRAIN.replace("LR = 0.1", "LR = 0.2"))
    (ws.dir / "pkg" / "deep").mkdir(parents=True)
    (ws.dir / "pkg" / "deep" / "helper.py").write_text("X = 1\n")
    (ws.dir / "prepare.py").write_text(PREPARE + "\n# tampered\n")
    assert ws.changed_files() == {"pkg/deep/helper.py": False, "prepare.py": True, "train.py": True}
    with pytest.raises(EditRejected) as refused:
        ws.verify_edits()
    message = str(refused.value)
    assert "\n" not in message and "pkg/deep/helper.py" in message and "prepare.py" in message
    assert "train.py" not in message.split("(only")[0]  # the allowed edit is not blamed
    assert not (ws.dir / "pkg" / "deep" / "helper.py").exists()
    assert (ws.dir / "prepare.py").read_text() == PREPARE
    assert "LR = 0.2" in (ws.dir / "train.py").read_text()  # the editable change is left for the caller
    assert ws.changed_files() == {"train.py": True}


def test_a_link_out_of_the_worktree_is_removed_not_followed(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"\x00" * 16)
    (ws.dir / "train.py").write_text(TRAIN.replace("LR = 0.1", "LR = 0.2"))
    (ws.dir / "escape").symlink_to(outside)
    assert ws.changed_files() == {"escape": False, "train.py": True}
    with pytest.raises(EditRejected, match="changed escape"):
        ws.verify_edits()
    assert not (ws.dir / "escape").is_symlink()
    assert (outside / "data.bin").read_bytes() == b"\x00" * 16  # what it pointed at is untouched


def test_ignored_files_are_no_edits(ws: Workspace) -> None:
    (ws.dir / "data").mkdir()
    (ws.dir / "data" / "cache.npy").write_bytes(b"1")  # .gitignore: data/
    (ws.dir / "train.py").write_text(TRAIN.replace("LR = 0.1", "LR = 0.3"))
    assert ws.verify_edits() == {"train.py": True}
    assert (ws.dir / "data" / "cache.npy").exists()


def test_a_new_file_whose_name_is_not_utf8_is_refused_in_a_line_the_ledger_can_hold(ws: Workspace,
                                                                                     tmp_path: Path) -> None:
    import os
    import sqlite3

    name = os.fsdecode(b"caf\xe9.py")  # Latin-1: a name git and the file system take, UTF-8 text does not
    (ws.dir / "train.py").write_text(TRAIN.replace("LR = 0.1", "LR = 0.2"))
    (ws.dir / name).write_text("X = 1\n")
    with pytest.raises(EditRejected) as refused:
        ws.verify_edits()
    message = str(refused.value)
    assert "caf\ufffd.py" in message and "\n" not in message
    db = sqlite3.connect(tmp_path / "reasons.sqlite")  # what the ledger does with a trial's reason
    db.execute("CREATE TABLE t (reason TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (message,))
    assert not (ws.dir / name).exists()  # put back like any other refused file
