"""`nightlab verify`: re-measure the best and the baseline on fresh seeds, ablate kept changes, test split,
and re-rank the kept states on the selection split.

Every measurement runs in a worktree of verify's own, so the branch stays at the best whatever happens.
The test and selection splits are linked into it only for their own runs and removed right after them.
With per-example values, best vs baseline is also compared on the same examples (evaluation noise
included). Results go into the ledger's `verify` table; the state best on the selection split gets the
ref `refs/nightlab/<tag>/select`.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from nightlab import crashpoint, per_example, project
from nightlab.config import Config
from nightlab.errors import NightlabError, TrialFailed, UsageError
from nightlab.ledger import Ledger, TrialRecord
from nightlab.measure import measure
from nightlab.runspec import run_spec, spec_fields
from nightlab.sandbox import Sandbox, load_sandbox
from nightlab.sandbox.limits import sweep_stale
from nightlab.stats import Comparison, compare, compare_paired
from nightlab.types import Status
from nightlab.workspace import Workspace, git

# Far above the loop's seeds (0..k-1 for the baseline, 1000n+k for trial n): verify's runs are fresh.
VERIFY_SEED = 1_000_000_000
NEAR_MISSES = 2  # discarded trials that came closest to a keep, re-scored beside the chain on the selection split


@dataclass
class Options:
    seeds: int = 5
    ablate: bool = False
    test: bool = False
    final: bool = False
    select: bool = False
    select_pair: bool = False  # only best vs baseline on the selection split (what `nightlab study` reports)


@dataclass
class Row:
    """One comparison: `runs` against `reference_runs` (effect > 0: `runs` are better)."""

    kind: str  # "val", "val-paired", "ablate", "test", "select", "select-test" or "select-pair"
    label: str
    trial: int
    commit_sha: str
    reference_runs: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    note: str = ""
    result: Comparison | None = None


def metric_on(cfg: Config, split: str) -> str:
    """What a run on another split reports: `val_loss` → `test_loss` / `select_loss`; a name without a `val`
    prefix stays as it is."""
    name = cfg.metric.name
    return split + name[3:] if name.startswith("val") else name


def unapply(tree: Path, patch: str, check: bool = False) -> bool:
    """Take `patch` out of the worktree `tree`; with check=True only say whether that would work."""
    cmd = ["git", "apply", "-R", "--unidiff-zero", "--whitespace=nowarn", *(["--check"] if check else []), "-"]
    proc = subprocess.run(cmd, input=patch + "\n", text=True, capture_output=True, cwd=tree)
    if proc.returncode != 0 and not check:
        raise NightlabError(f"git apply -R failed in {tree}: {proc.stderr.strip()}")
    return proc.returncode == 0


class Verifier:
    def __init__(self, cfg: Config, tag: str, ledger: Ledger, opts: Options, say: Callable[[str], None]) -> None:
        self.cfg, self.tag, self.ledger, self.opts, self.say = cfg, tag, ledger, opts, say
        self.state = project.state_dir(cfg, tag)
        self.trials = ledger.trials()
        base = next((t for t in self.trials if t.n == 0 and t.status == Status.BASELINE), None)
        kept = [t for t in self.trials if t.status == Status.KEEP]
        if base is None:
            raise UsageError(f"tag {tag!r} has no finished baseline yet; nothing to verify")
        if not kept:
            raise UsageError(f"tag {tag!r} has kept nothing yet (the best is the baseline); nothing to verify")
        self.base, self.kept, self.best = base, kept, ledger.best() or kept[-1]
        self.number = ledger.next_verify_run()
        self.seeds = [VERIFY_SEED + 1000 * self.number + i for i in range(opts.seeds)]
        self.sandbox: Sandbox = load_sandbox(cfg.sandbox.backend)
        self.ws = Workspace(cfg.root, tag, list(cfg.project.editable), cfg.project.scratchpad)
        self.visible = project.visible_data(cfg)
        self.examples: dict[str, list[per_example.Examples | None]] = {}  # per measurement, each seed's

    def run(self) -> list[Row]:
        sweep_stale()
        self.ws.open(fresh=False, best=self.best.commit_sha)
        self.ws.link_data(self.visible)
        # A worktree of its own: the branch stays at the best even if verify is killed halfway.
        self.ws = self.ws.spare("verify")
        rows: list[Row] = []
        base_runs, best_runs, note = self._pair("val", self.cfg, {})
        rows.append(self._row("val", f"{self.cfg.metric.name}: best vs baseline", self.best, base_runs, best_runs,
                              note))
        if paired := self._paired("baseline", "best", base_runs, best_runs):
            rows.append(self._row("val-paired", f"{self.cfg.metric.name}: best vs baseline, paired per example",
                                  self.best, base_runs, best_runs, "", paired))
        if self.opts.ablate:
            rows += [self._ablate(t, best_runs) for t in self.kept]
        if self.opts.test:
            rows.append(self._test())
        if self.opts.select_pair:
            rows.append(self._on_split("select", "select-pair"))
        if self.opts.select:
            rows += self._rerank()
        self._store(rows)
        return rows

    def _paired(self, ref: str, what: str, ref_runs: list[float], runs: list[float]) -> Comparison | None:
        """Best vs baseline on the same examples, when both sides' runs reported per-example values."""
        a, b = (per_example.average([e for e in self.examples.get(k, []) if e is not None]) for k in (ref, what))
        if not ref_runs or not runs or a is None or b is None or per_example.mismatch(a, b):
            return None
        return compare_paired(self.cfg.primary, ref_runs, runs, per_example.paired_se(b, a))

    # -- measurements ------------------------------------------------------------------------------
    def _measure(self, what: str, trial: TrialRecord, cfg: Config, env: dict[str, str],
                 patch: str = "", data: list[str] | None = None) -> list[float]:
        """The primary value of `trial`'s commit (minus `patch`, reversed) on every verify seed."""
        values, self.examples[what] = [], []
        for i, seed in enumerate(self.seeds):
            self.ws.reset(trial.commit_sha)
            if patch:
                unapply(self.ws.tree, patch)
            self.say(f"{what}: seed {i + 1}/{len(self.seeds)}")
            run_dir = self.state / "verify" / str(self.number) / what / f"seed-{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            spec = run_spec(cfg, self.ws.dir, run_dir, seed=seed, trial=trial.n, env=env,
                            isolation=self._isolation(env.get("NIGHTLAB_SPLIT")))
            measured = measure(cfg, self.sandbox, spec, [], data=data)
            crashpoint.reached("verify.measured")
            values.append(measured.values[cfg.metric.name])
            self.examples[what].append(measured.examples)
        return values

    def _paths(self, split: str | None) -> list[str]:
        return {"test": self.cfg.data.test, "select": self.cfg.data.select}.get(split or "", [])

    def _isolation(self, split: str | None) -> dict:
        """What an isolating sandbox shows the run: as for trials, plus the test or selection split for its own runs."""
        fields = spec_fields(self.cfg, self.ws.dir)
        if paths := self._paths(split):
            shown = [Path(p) if Path(p).is_absolute() else self.cfg.root / p for p in paths]
            fields["readonly"] = fields["readonly"] + [p.resolve() for p in shown if p.exists()]
            opened = {*shown, *(self.ws.dir / p for p in paths)}
            fields["masked"] = [m for m in fields["masked"] if m not in opened]
        return fields

    @contextmanager
    def _split(self, split: str, final: bool = False) -> Iterator[tuple[Config, dict[str, str], list[str]]]:
        """The config, environment and data paths of runs on `split`; its paths exist in the worktree only meanwhile."""
        cfg = self.cfg.model_copy(deep=True)
        cfg.metric.name = metric_on(self.cfg, split)
        if split == "test":
            cfg.metric.evaluate = self.cfg.metric.test_command or self.cfg.metric.evaluate
        env = {"NIGHTLAB_SPLIT": split} | ({"NIGHTLAB_FINAL": "1"} if final else {})
        paths = self._paths(split)
        relative = [p for p in paths if not Path(p).is_absolute()]
        linked = [p for p in relative if not (self.ws.dir / p).exists() and not (self.ws.dir / p).is_symlink()]
        self.ws.link_data(self.visible + linked)
        try:
            yield cfg, env, self.visible + paths
        finally:
            for p in linked:
                if (self.ws.dir / p).is_symlink():
                    (self.ws.dir / p).unlink()
            self.ws.link_data(self.visible)

    def _pair(self, kind: str, cfg: Config, env: dict[str, str],
              data: list[str] | None = None) -> tuple[list[float], list[float], str]:
        prefix = "" if kind == "val" else f"{kind}-"
        try:
            base = self._measure(f"{prefix}baseline", self.base, cfg, env, data=data)
            best = self._measure(f"{prefix}best", self.best, cfg, env, data=data)
        except TrialFailed as e:
            return [], [], f"a run failed ({e.status}: {e}); see {self.state / 'verify' / str(self.number)}"
        return base, best, ""

    def _ablate(self, kept: TrialRecord, best_runs: list[float]) -> Row:
        """The best without one kept change: how much worse it gets is what that change contributes."""
        label = f"without trial {kept.n}: {kept.description}"[:80]
        if kept.n == self.best.n and len(self.kept) == 1:
            return self._row("ablate", label, kept, [], [], "the only kept change: see best vs baseline")
        parent = git("rev-parse", f"{kept.commit_sha}^", cwd=self.ws.dir)
        self.ws.reset(self.best.commit_sha)
        # Without context lines first: a later change on a neighbouring line must not block taking this one out.
        for context in ("-U0", "-U3"):
            patch = git("diff", context, parent, kept.commit_sha, "--", *self.cfg.project.editable, cwd=self.ws.dir)
            if not patch.strip():
                return self._row("ablate", label, kept, [], [], "changed no editable file")
            if unapply(self.ws.tree, patch, check=True):
                break
        else:
            return self._row("ablate", label, kept, [], [], "cannot be taken out cleanly (later changes overlap)")
        try:
            without = self._measure(f"without-trial-{kept.n}", self.best, self.cfg, {}, patch=patch)
        except TrialFailed as e:
            return self._row("ablate", label, kept, [], [], f"without it a run fails ({e.status}: {e})")
        return self._row("ablate", label, kept, without, best_runs, "")

    def _test(self) -> Row:
        """Baseline and best on the test split."""
        return self._on_split("test", "test", self.opts.final)

    def _on_split(self, split: str, kind: str, final: bool = False) -> Row:
        """Baseline and best on `split`, on the verify seeds."""
        with self._split(split, final) as (cfg, env, data):
            base, best, note = self._pair(kind, cfg, env, data=data)
        label = f"{cfg.metric.name}: best vs baseline" + (" (retrained on train+val)" if final else "")
        return self._row(kind, label, self.best, base, best, note)

    # -- re-ranking on the selection split --------------------------------------------------------------
    def states(self) -> list[tuple[TrialRecord, str]]:
        """The chain (baseline and every keep) and the discarded trials that came closest to a keep."""
        goal = self.cfg.primary
        misses = [t for t in self.trials if t.status == Status.DISCARD and t.delta is not None
                  and not t.reason.startswith("stale")]
        misses.sort(key=lambda t: -goal.improvement(t.delta or 0.0, 0.0))
        near = sorted(misses[:NEAR_MISSES], key=lambda t: t.n)
        return [(self.base, "baseline"), *((t, "keep") for t in self.kept), *((t, "near miss") for t in near)]

    def _rerank(self) -> list[Row]:
        """Every state of the chain (and the near misses) on the selection split, and on test with --test."""
        rows = self._score_states("select")
        if self.opts.test:
            rows += self._score_states("test")
        scored = [r for r in rows if r.kind == "select" and r.runs]
        if scored:
            winner = max(scored, key=lambda r: (self.cfg.primary.improvement(statistics.fmean(r.runs), 0.0), -r.trial))
            git("update-ref", f"refs/nightlab/{self.tag}/select", winner.commit_sha, cwd=self.cfg.root)
            self.ledger.set_meta(select_best=winner.trial)
            winner.note = "best on the selection split"
        return rows

    def _score_states(self, split: str) -> list[Row]:
        rows = []
        kind = "select" if split == "select" else "select-test"
        with self._split(split) as (cfg, env, data):
            ref: list[float] = []
            for trial, role in self.states():
                label = f"trial {trial.n} ({role}): {trial.description}"[:80]
                try:
                    runs = self._measure(f"{split}-trial-{trial.n}", trial, cfg, env, data=data)
                except TrialFailed as e:
                    rows.append(self._row(kind, label, trial, ref, [], f"a run failed ({e.status}: {e})"))
                    continue
                ref = ref or runs  # the baseline's: every state's effect is against it
                rows.append(self._row(kind, label, trial, ref, runs, ""))
        return rows

    def _row(self, kind: str, label: str, trial: TrialRecord, ref: list[float], runs: list[float], note: str,
             result: Comparison | None = None) -> Row:
        result = result or (compare(self.cfg.primary, ref, runs) if ref and runs else None)
        return Row(kind, label, trial.n, trial.commit_sha, ref, runs, note, result)

    # -- the ledger ------------------------------------------------------------------------------
    def _store(self, rows: list[Row]) -> None:
        now = time.time()
        records = []
        for r in rows:
            c = r.result.as_dict() if r.result else {f.name: None for f in fields(Comparison)}
            records.append({"run": self.number, "kind": r.kind, "label": r.label, "trial": r.trial,
                            "commit_sha": r.commit_sha, "seeds": self.seeds, "final": int(self.opts.final),
                            "reference_runs": r.reference_runs, "runs": r.runs, **c, "note": r.note, "created": now})
        self.ledger.save_verify(records)


def _pm(runs: list[float], mean: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4g} ± {statistics.stdev(runs):.2g}" if len(runs) >= 2 else f"{mean:.4g}"


def _effect(r: dict) -> str:
    if r["effect"] is None:
        return f"[yellow]{escape(r['note'])}[/]"
    ci = f" [{r['ci_low']:+.2g}, {r['ci_high']:+.2g}]" if r["ci_low"] is not None else ""
    style = "green" if r["ci_low"] is not None and r["ci_low"] > 0 else "yellow"
    return f"[{style}]{r['effect']:+.3g}[/]{escape(ci)}" + (f" [yellow]{escape(r['note'])}[/]" if r["note"] else "")


def table(rows: list[dict], metric_name: str, title: str = "") -> Table:
    """One table: each check's two sides, the effect (positive = better) with its 95% CI, the p-value."""
    t = Table(title=title or None, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("check", ratio=3, overflow="fold")
    t.add_column("n", justify="right")
    t.add_column("baseline\nor without", justify="right", no_wrap=True)
    t.add_column("best", justify="right", no_wrap=True)
    t.add_column("effect [95% CI]", ratio=3, overflow="fold")
    t.add_column("p", justify="right", no_wrap=True)
    for r in rows:
        p = "—" if r["p_value"] is None else ("<0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}")
        t.add_row(escape(r["label"]), str(len(r["runs"]) or "—"), _pm(r["reference_runs"], r["reference"]),
                  _pm(r["runs"], r["value"]), _effect(r), p)
    return t


def rerank_table(rows: list[dict], trials: list[TrialRecord], cfg: Config) -> Table:
    """Each state of the chain (and the near misses): validation as searched, selection and test as re-measured."""
    val = {t.n: t.metric for t in trials}
    test = {r["trial"]: r for r in rows if r["kind"] == "select-test"}
    t = Table(title="re-ranking on the selection split", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("state", ratio=3, overflow="fold")
    t.add_column(cfg.metric.name, justify="right", no_wrap=True)
    t.add_column(metric_on(cfg, "select"), justify="right", no_wrap=True)
    if test:
        t.add_column(metric_on(cfg, "test"), justify="right", no_wrap=True)
    for r in (r for r in rows if r["kind"] == "select"):
        mark = "[bold green]★[/] " if r["note"] == "best on the selection split" else "  "
        select = _pm(r["runs"], r["value"]) if r["runs"] else f"[yellow]{escape(r['note'])}[/]"
        searched = f"{val[r['trial']]:.4g}" if val.get(r["trial"]) is not None else "—"
        cells = [mark + escape(r["label"]), searched, select]
        if test:
            other = test.get(r["trial"])
            cells.append(_pm(other["runs"], other["value"]) if other and other["runs"] else "—")
        t.add_row(*cells)
    return t


def rerank_summary(rows: list[dict], chain_best: int, tag: str) -> str:
    winner = next((r["trial"] for r in rows if r["kind"] == "select" and r["note"] == "best on the selection split"),
                  None)
    if winner is None:
        return "[yellow]no state could be scored on the selection split[/]"
    ref = f"refs/nightlab/{tag}/select"
    if winner == chain_best:
        return f"the selection split agrees: trial {winner}, the end of the chain, is best there ({ref})"
    return (f"[yellow]best on the selection split: trial {winner}, not the chain's best (trial {chain_best})[/]: "
            f"what was kept after it may have fitted the validation split; {ref} points at it")
