"""Helpers for end-to-end tests: tiny real projects (git repos), the real CLI in a subprocess, the real ledger.

Nothing here is mocked. Every git and CLI subprocess runs with no user identity at all
(GIT_CONFIG_GLOBAL=/dev/null, GIT_CONFIG_NOSYSTEM=1, a fresh HOME), so whatever nightlab commits it
commits as itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A deterministic "training" script: loss is a function of the constants, plus a seed-dependent offset
# of exactly -NOISE, 0 or +NOISE (seed % 3), so the noise estimate over seeds 0, 1, 2 is exactly NOISE.
TRAIN = '''"""A tiny deterministic training script for nightlab tests."""
import os

# knobs
LR = 0.1
BONUS = 0.0
NOISE = 0.0
MEMORY = 0.1

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
loss = 1.0 + (LR - 0.3) ** 2 - BONUS + NOISE * ((seed % 3) - 1)
print("step 1/1: done")
print(f"val_loss: {loss:.6f}")
print(f"peak_memory_gb: {MEMORY}")
'''
BASE_LOSS = 1.04  # the loss of TRAIN as written (LR = 0.1)

PREPARE = 'print("prepared")\n'
PROGRAM = """# Program

Make val_loss smaller.

## Phase 1 — Hyperparameters

Tune LR.

## Phase 2 — Architecture

Anything else.
"""
GITIGNORE = "data/\n"

BASE_CONFIG: dict = {
    "project": {"editable": ["train.py"], "protected": ["prepare.py"]},
    "run": {"command": "python train.py", "budget_s": 1, "timeout_s": 30, "grace_s": 0.5},
    "metric": {"name": "val_loss", "goal": "minimize", "constraints": [{"name": "peak_memory_gb", "max": 1.0}]},
    "keep": {"noise_runs": 1},
    "agent": {"name": "scripted", "queue": "ideas.toml"},
    "sandbox": {"backend": "process"},
}


# -- a minimal TOML writer (enough for nightlab.toml and ideas.toml) -------------------------------------
def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def toml_dumps(data: dict) -> str:
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {_value(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


def merged(base: dict, overrides: dict | None) -> dict:
    result = {k: dict(v) for k, v in base.items()}
    for section, values in (overrides or {}).items():
        if values is None:
            result.pop(section, None)
            continue
        result.setdefault(section, {}).update(values)
    return result


# -- ideas for the scripted agent -----------------------------------------------------------------------
def sub(search: str, replace: str, file: str = "train.py") -> dict:
    return {"file": file, "search": search, "replace": replace}


def content(text: str, file: str = "train.py") -> dict:
    return {"file": file, "content": text}


def idea(description: str, *edits: dict, hypothesis: str = "") -> dict:
    return {"description": description, "hypothesis": hypothesis, "edit": list(edits)}


def ideas_toml(ideas: list[dict]) -> str:
    out = []
    for i in ideas:
        out.append("[[idea]]")
        out.append(f"description = {_value(i['description'])}")
        if i.get("hypothesis"):
            out.append(f"hypothesis = {_value(i['hypothesis'])}")
        for e in i["edit"]:
            out.append("[[idea.edit]]")
            out += [f"{k} = {_value(v)}" for k, v in e.items()]
        out.append("")
    return "\n".join(out)


# -- environment, git, CLI ----------------------------------------------------------------------------------
def isolated_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any git identity or git/nightlab settings, HOME in a temp dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "NIGHTLAB_"))}
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    home.mkdir(parents=True, exist_ok=True)
    return env | (extra or {})


def git(*args: str, cwd: Path, env: dict[str, str], check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


CLI = [sys.executable, "-c", "from nightlab.entry import main; main()"]  # the `nightlab` command, as installed
FULL_CLI = [sys.executable, "-c", "from nightlab.cli import main; main()"]  # its typer CLI, without the quick path


def in_pty(args: list[str], cwd: Path, env: dict[str, str], columns: int = 120, lines: int = 40,
           timeout: float = 300) -> tuple[int, str]:
    """Run a command on a real pseudo-terminal of the given size (as a user's terminal or tmux pane is);
    returns its exit code and everything it wrote, control codes included. COLUMNS/LINES in `env` win
    over the terminal's size, as they do for rich; leave them out to test what the terminal says."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline, exited = [], time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        # once it has exited, all it wrote is waiting: read until nothing is left (it may have written its
        # last lines after the previous select gave up)
        ready, _, _ = select.select([master], [], [], 0 if exited else 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal and all was read
                break
            if not data:
                break
            chunks.append(data)
        elif exited:
            break
        else:
            exited = proc.poll() is not None
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]")


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows of `raw`, one entry per line or line segment: control codes dropped, split
    at newlines and carriage returns (a redraw starts at the line's first column)."""
    return re.split(r"[\r\n]", CONTROL.sub("", raw))


@dataclass
class Project:
    """A tiny nightlab project: a git repo with one commit, run through the real CLI."""

    dir: Path
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return isolated_env(self.home, self.extra_env)

    def git(self, *args: str, check: bool = True) -> str:
        return git(*args, cwd=self.dir, env=self.env, check=check)

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def config(self, overrides: dict | None = None) -> None:
        self.write("nightlab.toml", toml_dumps(merged(BASE_CONFIG, overrides)))

    def ideas(self, *ideas: dict) -> None:
        self.write("ideas.toml", ideas_toml(list(ideas)))

    def commit_all(self, message: str = "fixture") -> None:
        # The fixture's own commits name an identity on the command line only: the repository and the
        # environment still have none, so nightlab's commits must supply their own.
        self.git("add", "-A")
        self.git("-c", "user.name=fixture", "-c", "user.email=fixture@example.com", "commit", "-q", "-m", message)

    def nl(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], cwd=cwd or self.dir, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)

    def run(self, *args: str, tag: str = "t", ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = self.nl("run", "--tag", tag, *args, timeout=timeout)
        if ok:
            assert proc.returncode == 0, f"nightlab run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc

    def state(self, tag: str = "t") -> Path:
        return self.dir / ".nightlab" / tag

    def worktree(self, tag: str = "t") -> Path:
        return self.state(tag) / "worktree"

    def rows(self, sql: str, tag: str = "t") -> list[dict]:
        """The rows a query of the real SQLite ledger returns, read directly."""
        db = sqlite3.connect(self.state(tag) / "ledger.sqlite")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql)]
        finally:
            db.close()

    def ledger(self, tag: str = "t") -> list[dict]:
        """The trials table."""
        rows = self.rows("SELECT * FROM trials ORDER BY n", tag)
        for r in rows:
            r["runs"] = json.loads(r["runs"]) if r["runs"] else []
            r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else {}
        return rows

    def runs(self, tag: str = "t") -> list[dict]:
        """The runs table, in the order the runs started."""
        return self.rows("SELECT * FROM runs ORDER BY started", tag)

    def trial(self, n: int, tag: str = "t") -> dict:
        return next(r for r in self.ledger(tag) if r["n"] == n)

    def log_json(self, tag: str = "t") -> list[dict]:
        proc = self.nl("log", "--tag", tag, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def status_json(self, tag: str = "t") -> dict:
        proc = self.nl("status", "--tag", tag, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


def make_project(root: Path, train: str = TRAIN, config: dict | None = None, files: dict[str, str] | None = None,
                 ideas: list[dict] | None = None, extra_env: dict[str, str] | None = None) -> Project:
    """A committed project under root/proj (HOME is root/home); ideas.toml is written untracked."""
    proj = Project(root / "proj", root / "home", dict(extra_env or {}))
    proj.dir.mkdir(parents=True)
    proj.git("init", "-q", "-b", "main")
    proj.write("train.py", train)
    proj.write("prepare.py", PREPARE)
    proj.write("program.md", PROGRAM)
    proj.write(".gitignore", GITIGNORE)
    proj.config(config)
    for name, text in (files or {}).items():
        proj.write(name, text)
    proj.commit_all("initial project")
    # the scripted agent needs a queue even when no trial will use it (e.g. --max-trials 0)
    placeholder = idea("placeholder: only take notes", content("notes\n", "scratchpad.md"))
    proj.ideas(*(ideas if ideas is not None else [placeholder]))
    return proj


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Assert the CLI's bad-usage contract (exit 2, one line on stderr, no traceback); return that line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{proc.stderr}"
    return lines[0]


def commit_message(proj: Project, ref: str) -> str:
    return proj.git("log", "-1", "--format=%B", ref)


# -- parallel slots: a slow training script and the invariants every parallel session keeps -----------------
PARALLEL_TRAIN = '''"""A tiny training script whose runs take SLEEP seconds, wait while HOLD exists, and wait
until UNTIL's query ("ledger|sql") of the ledger returns a row: tests order runs by events, not by their length."""
import os
import sqlite3
import time

LR = 0.1

# a spacer, so changes to LR and BONUS do not touch

BONUS = 0.0

# another spacer

SLEEP = 0.4

HOLD = ""

UNTIL = ""


def until(gate: str) -> bool:
    db = sqlite3.connect(f"file:{gate.split('|')[0]}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(gate.split("|")[1]).fetchone() is not None
    finally:
        db.close()


with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "pid"), "w") as f:
    f.write(str(os.getpid()))
while HOLD and os.path.exists(HOLD):
    time.sleep(0.05)
waited = time.monotonic()
while UNTIL and not until(UNTIL) and time.monotonic() - waited < 300:  # the cap only keeps a broken test from hanging
    time.sleep(0.05)
time.sleep(SLEEP)
print("gpus:", os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
print(f"val_loss: {1.0 + (LR - 0.3) ** 2 - BONUS:.6f}")
print("peak_memory_gb: 0.1")
'''


def parallel_project(tmp_path: Path, *ideas: dict, config: dict | None = None, train: str = PARALLEL_TRAIN) -> Project:
    """A project of PARALLEL_TRAIN with `ideas` queued and committed."""
    proj = make_project(tmp_path, train=train, config=config)
    proj.ideas(*ideas)
    proj.commit_all("ideas")
    return proj


def until(root: Path, sql: str) -> dict:
    """A change to PARALLEL_TRAIN: its runs wait until `sql` on make_project(root)'s ledger (tag t) returns a row."""
    return sub('UNTIL = ""', f'UNTIL = "{root / "proj" / ".nightlab" / "t" / "ledger.sqlite"}|{sql}"')


def check_consistent(proj: Project) -> list[dict]:
    """Every trial once and finished, every trial ref at its commit, the branch a chain of keeps ending at the best."""
    rows = proj.ledger()
    assert [r["n"] for r in rows] == list(range(len(rows)))
    assert all(r["status"] != "running" for r in rows)
    refs = dict(line.split() for line in proj.git("for-each-ref", "--format=%(refname) %(objectname)",
                                                  "refs/nightlab/t/").splitlines())
    committed = [r for r in rows if r["commit_sha"]]
    assert {f"refs/nightlab/t/trial-{r['n']}": r["commit_sha"] for r in committed} == refs
    # in the order they were recorded: a trial rebased onto a later-numbered keep may be kept after it
    chain = sorted((r for r in rows if r["status"] in ("baseline", "keep")), key=lambda r: (r["finished"], r["n"]))
    assert proj.git("rev-parse", "nightlab/t") == chain[-1]["commit_sha"]
    for before, after in zip(chain, chain[1:]):
        assert proj.git("rev-parse", f"{after['commit_sha']}^") == before["commit_sha"]
        assert after["parent"] == before["commit_sha"]
    assert proj.git("status", "--porcelain") == ""  # the user's checkout is untouched
    return rows
