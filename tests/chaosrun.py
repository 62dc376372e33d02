"""The chaos suite's engine: a seeded scenario, `nightlab run` and `nightlab verify` killed with -9 at seeded points
and resumed with the same command until they finish, then every invariant checked against an uninterrupted run
of the same seeds. tests/test_chaos.py runs a short form; benchmarks/chaos.py the long one, with figures."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chaoskit import chaos_env, finish, locks, resumed, start, worktree_troubles
from nlkit import Project, git, idea, make_project, sub

# Every step of a run and of verify, by nightlab's own points and by the git calls each step makes.
# nightlab writes a trial's commit, its amended message and its ref itself (gitcommit.py): its git.* points stand
# where `git commit`, `git commit-tree` and `git update-ref` were (objects written; locks held, as git's "prepared";
# a trial's commit moves no ref, so it holds no lock).
# Its resets are its own too (gitworktree.py): git.reset.* stand where `git reset --hard` wrote the index (its
# lock written) and moved HEAD (locks held); `git status` runs once an invocation, to learn what is ignored.
RESET = ["git.reset.indexed", "git.reset.locked"]
# A reset holds the ref locks only when HEAD moves (gitworktree.py): the first arrival is the only one every
# verify surely makes (its worktree may already be at the baseline; a seed's reset to the same commit moves nothing).
SURE_AT_MOST = {"git.reset.locked": 1}
POINTS_RUN = ["start.branch", "start.worktree", "start.ledger", "recovered", "trial.briefed", "git.commit.written",
              "trial.committed", "run.started", "run.finished", "git.amend.written",
              "git.mark.locked", "trial.recorded", "report.written", *RESET]
POINTS_OPTUNA = ["optuna.asked"]
POINTS_VERIFY = ["verify.measured", *RESET]
GIT_RUN = ["worktree add", "branch", "status", "rev-parse"]  # `git show` is nightlab's own too (gitdiff.py)
GIT_VERIFY: list[str] = []  # its resets and HEAD reads are nightlab's own now
REPEATED = {"rev-parse"}  # made more than once by every invocation
LOCKING = {"worktree add", "branch"}  # git calls with a ref transaction: ":inside" can land there
TRIAL_STEPS = ("trial.", "run.", "git.")  # named points only an invocation that runs a trial reaches

# The scripted agent's ideas: every outcome a trial can have.
IDEAS = [idea("LR 0.1 -> 0.2 (keep)", sub("LR = 0.1", "LR = 0.2")),
         idea("BONUS down (discard)", sub("BONUS = 0.0", "BONUS = -0.1")),
         idea("crash", sub('print("step 1/1: done")', 'raise SystemExit("boom")')),
         idea("touch prepare.py (rejected)", sub('print("prepared")', 'print("x")', "prepare.py")),
         idea("MEMORY up (invalid)", sub("MEMORY = 0.1", "MEMORY = 5.0")),
         idea("LR 0.2 -> 0.3 (keep)", sub("LR = 0.2", "LR = 0.3"))]


@dataclass
class Scenario:
    seed: int
    agent: str = "scripted"  # or "optuna"
    sandbox: str = "process"  # or "bwrap"
    trials: int = len(IDEAS)
    kills: int = 12  # kill points armed for `run` (fewer land when the run finishes first)
    verify_kills: int = 3

    def config(self) -> dict:
        sandbox = {"backend": self.sandbox} | ({"memory_gb": 1} if self.sandbox == "bwrap" else {})
        agent = {"name": "optuna", "seed": self.seed} if self.agent == "optuna" else {"name": "scripted"}
        return {"sandbox": sandbox, "agent": agent | ({"queue": "ideas.toml"} if self.agent == "scripted" else {})}


@dataclass
class Figures:
    kills: Counter = field(default_factory=Counter)  # by where they landed
    unreached: int = 0  # points armed that the command finished before reaching
    invocations: int = 0
    pids: set[int] = field(default_factory=set)  # the killed nightlab processes (their cgroups must be gone)
    checked: Counter = field(default_factory=Counter)  # invariants held, by name

    def total(self) -> int:
        return sum(self.kills.values())


def project(root: Path, sc: Scenario) -> Project:
    return make_project(root, config=sc.config(), ideas=IDEAS)


def pick(rng: random.Random, named: list[str], words: list[str], first: bool, most: int = 1,
         done: bool = False) -> tuple[str, dict]:
    """A kill point: (where, chaos_env arguments). An invocation runs one trial, so the first arrival at a point
    (the first or second git call of a kind that is made several times) is one it reaches; points of a first
    start only while it has not happened, a trial's own named points only while trials remain (`done`: none).
    `most`: arrivals an invocation surely makes at each named point."""
    if done:
        named = [n for n in named if not n.startswith(TRIAL_STEPS)]
    if not first:
        named = [n for n in named if not n.startswith("start.")]
        words = [w for w in words if w not in ("worktree add", "branch")]
    if not words or rng.random() < 0.5:
        name = rng.choice(named)
        return name, {"crash_at": f"{name}#{rng.randint(1, min(most, SURE_AT_MOST.get(name, most)))}"}
    words_at = rng.choice(words)
    k = rng.randint(1, max(2, most)) if words_at in REPEATED else 1
    mode = rng.choice(["", ":inside"]) if words_at in LOCKING else ""  # elsewhere the hook never runs
    return f"git {words_at}{' (inside)' if mode else ''}", {"git_at": f"{words_at}#{k}{mode}"}


def invoke(proj: Project, work: Path, args: list[str], where: str, point: dict, figures: Figures) -> bool:
    """One invocation with a kill point armed: whether it was killed (else it finished, and must have)."""
    figures.invocations += 1
    proc = start(proj, *args, env=chaos_env(proj, work, **point))
    code, out = finish(proc)
    if code == -signal.SIGKILL:
        figures.kills[where] += 1
        figures.pids.add(proc.pid)
        return True
    assert code == 0, f"nightlab {' '.join(args)} failed after {figures.total()} kills ({where}):\n{out}"
    figures.unreached += 1
    return False


def hammer_run(proj: Project, work: Path, rng: random.Random, sc: Scenario, figures: Figures) -> None:
    """`nightlab run` to sc.trials, a trial at a time (--max-trials grows as trials finish, as a user resuming a
    night in parts would), each invocation with a kill point armed, until sc.kills of them landed; then to the end.
    Once every trial is done, kills still land in what a resume does (recovery, the view, the report)."""
    named = POINTS_RUN + (POINTS_OPTUNA if sc.agent == "optuna" else [])
    landed = 0
    for _ in range(4 * sc.kills):
        if landed >= sc.kills:
            break
        target = min(sc.trials, finished(proj))  # finished counts the baseline: trial `finished` is next
        where, point = pick(rng, named, GIT_RUN, first=not (proj.state() / "ledger.sqlite").exists(),
                            done=finished(proj) > sc.trials)
        landed += invoke(proj, work, ["run", "--tag", "t", "--max-trials", str(target)], where, point, figures)
    resumed(proj, "run", "--tag", "t", "--max-trials", str(sc.trials))


def hammer_verify(proj: Project, work: Path, rng: random.Random, sc: Scenario, figures: Figures) -> None:
    """`nightlab verify` with a kill point armed each time until sc.verify_kills landed; then to its end."""
    args, landed = ["verify", "--tag", "t", "--seeds", "2"], 0
    for _ in range(4 * sc.verify_kills):
        if landed >= sc.verify_kills:
            break
        where, point = pick(rng, POINTS_VERIFY, GIT_VERIFY, first=False, most=4)  # 2 seeds of baseline and best
        if not invoke(proj, work, args, where, point, figures):
            return  # it finished: a verify stored is a verify done
        landed += 1
    resumed(proj, *args)


def finished(proj: Project) -> int:
    if not (proj.state() / "ledger.sqlite").exists():
        return 0
    return sum(t["status"] != "running" for t in proj.ledger())


def outcome(proj: Project) -> list[tuple]:
    return [(t["n"], t["status"], t["metric"], t["description"], t["runs"]) for t in proj.ledger()]


def verify_outcome(proj: Project) -> list[tuple]:
    rows = proj.rows("SELECT run, kind, label, runs, reference_runs FROM verify ORDER BY run, kind, label")
    return [tuple(r.values()) for r in rows]


def reference(root: Path, sc: Scenario) -> tuple[list[tuple], list[tuple]]:
    """What an uninterrupted run (and verify) of the same scenario gives."""
    proj = project(root, sc)
    resumed(proj, "run", "--tag", "t", "--max-trials", str(sc.trials))
    if any(t["status"] == "keep" for t in proj.ledger()):
        resumed(proj, "verify", "--tag", "t", "--seeds", "2")
    return outcome(proj), verify_outcome(proj)


def chaos(root: Path, sc: Scenario, figures: Figures) -> None:
    """The scenario under kills; asserts every invariant against its uninterrupted reference."""
    want, want_verify = reference(root / "reference", sc)
    proj = project(root / "chaos", sc)
    checkout = user_checkout(proj)
    rng = random.Random(sc.seed)
    hammer_run(proj, root / "kit", rng, sc, figures)
    if want_verify:
        hammer_verify(proj, root / "kit", rng, sc, figures)
    check(proj, sc, figures, checkout)
    assert outcome(proj) == want, "the outcome differs from the uninterrupted run's"
    assert verify_outcome(proj) == want_verify, "verify's outcome differs from the uninterrupted verify's"
    figures.checked["outcome = uninterrupted"] += 1


def user_checkout(proj: Project) -> tuple[str, str, str]:
    return proj.git("status", "--porcelain"), proj.git("rev-parse", "HEAD"), proj.git("branch", "--show-current")


def check(proj: Project, sc: Scenario, figures: Figures, checkout: tuple[str, str, str]) -> None:
    trials = proj.ledger()
    held = {
        "trials 0..N once each": [t["n"] for t in trials] == list(range(sc.trials + 1)),
        "none running": all(t["status"] != "running" for t in trials)
        and not proj.rows("SELECT job FROM runs WHERE status = 'running'"),
        "refs = ledger commits": trial_refs(proj) == {t["n"]: t["commit_sha"] for t in trials if t["commit_sha"]},
        "branch = best": proj.git("rev-parse", "nightlab/t") == best(trials)["commit_sha"],
        "results.tsv = ledger": tsv(proj) == [(t["commit_sha"][:7], t["status"], t["description"]) for t in trials],
        "git fsck clean": proj.git("fsck", "--no-dangling", "--no-progress") == "",
        "no stale lock": locks(proj) == [],
        "no locked/prunable worktree": worktree_troubles(proj) == [],
        "no leftover process": leftover_processes(proj) == [],
        "no leftover cgroup": leftover_cgroups(figures.pids) == [],
        "user checkout untouched": user_checkout(proj) == checkout,
        "worktree clean to git": git("status", "--porcelain", cwd=proj.worktree(), env=proj.env) == "",
    }
    broken = [name for name, ok in held.items() if not ok]
    assert not broken, f"invariants broken: {broken}"
    figures.checked.update(held.keys())


def best(trials: list[dict]) -> dict:
    return [t for t in trials if t["status"] in ("baseline", "keep")][-1]


def trial_refs(proj: Project) -> dict[int, str]:
    out = proj.git("for-each-ref", "--format=%(refname) %(objectname)", "refs/nightlab/t/")
    return {int(name.rsplit("-", 1)[1]): sha for name, sha in (line.split() for line in out.splitlines())
            if "/trial-" in name}


def tsv(proj: Project) -> list[tuple[str, str, str]]:
    lines = (proj.state() / "results.tsv").read_text().splitlines()[1:]
    return [(c[0], c[3], c[4]) for c in (line.split("\t") for line in lines)]


def leftover_processes(proj: Project) -> list[int]:
    """Processes working in the project (its checkout, worktrees, run directories)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cwd = Path(os.readlink(f"/proc/{entry.name}/cwd"))
            except OSError:
                continue
            if cwd == proj.dir or proj.dir in cwd.parents:
                found.append(int(entry.name))
    return found


def leftover_cgroups(pids: set[int]) -> list[Path]:
    """Run cgroups of the killed nightlab processes still there (the next start removes them). nightlab makes
    them beside its own cgroups, which are this process's: it started them."""
    found: list[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else ["unified"]:
            parent = Path("/sys/fs/cgroup") / c / path.lstrip("/")
            found += [g for pid in pids for g in parent.glob(f"nightlab-{pid}-*")]
    return found
