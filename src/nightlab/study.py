"""`nightlab study`: which search is better, measured rather than read off one run.

An arm is a set of config overrides (policy, screening, agent, keep settings). Each arm runs R independent sessions
(tags `study-<name>-<arm>-<r>`), session r with agent seed `agent.seed + r` (the same seeds in every arm: common
random numbers), each stopped by the same compute budget: seconds of runs, the baseline's included, so an arm that
screens or re-runs pays for it. Each session's final best is then re-measured against the baseline on fresh seeds
(`nightlab verify`), and also on the selection split when the project has one (`[data] select`); an arm that kept
nothing has a verified gain of exactly 0. Per arm: the mean verified gain and the verified gain per compute-hour,
each with a t-interval over the R sessions (report/study.py).

Resumable: study.json (in .nightlab/study-<name>/) holds the settings and every finished session; a rerun skips
those, resumes the sessions that were interrupted (a tag resumes like `nightlab run`) and refuses other settings.
Sessions start r-major (so a study stopped early stays balanced across arms), one after another or up to
`--parallel` at once (study_pool.py); each holds its tag's lock, as `nightlab run` does.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import ValidationError

from nightlab import config, project
from nightlab.config import Config
from nightlab.errors import UsageError
from nightlab.ledger import Ledger, TrialRecord
from nightlab.taglock import tag_lock
from nightlab.types import Event, Status

STATE = "study.json"


@dataclass
class Arm:
    name: str
    overrides: dict[str, object] = field(default_factory=dict)


@dataclass
class Outcome:
    """One finished session of one arm."""

    arm: str
    r: int
    tag: str
    gain: float  # verified: best vs baseline on fresh seeds, positive = better (0 when nothing was kept)
    compute_s: float  # seconds of runs, the baseline's included
    trials: int
    kept: int
    stopped: str
    note: str = ""
    curve: list[list[float]] = field(default_factory=list)  # [compute_s so far, in-loop gain of the best so far]
    select_gain: float | None = None  # verified on the selection split; None without one (or when its runs failed)

    @property
    def per_hour(self) -> float:
        return self.gain / (self.compute_s / 3600) if self.compute_s > 0 else 0.0


def parse_arm(text: str) -> Arm:
    """`NAME` or `NAME: section.key=value, section.key=value` (values are TOML: 3, 0.5, "frontier", true)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise UsageError(f"--arm {text!r}: an arm is NAME or NAME: section.key=value, ... (NAME: letters, digits, "
                         "- _ . +)")
    overrides: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key.strip().count(".") != 1:
            raise UsageError(f"--arm {name}: {part!r} is not section.key=value")
        overrides[key.strip()] = _toml_value(value.strip())
    return Arm(name, overrides)


def _toml_value(text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def arm_config(cfg: Config, arm: Arm, r: int) -> Config:
    """The config of session r of `arm`: the project's, the arm's overrides, agent seed + r."""
    out = cfg.model_copy(deep=True)
    for key, value in arm.overrides.items():
        section, name = key.split(".")
        part = getattr(out, section, None)
        if not isinstance(part, config.Section) or name not in type(part).model_fields:
            raise UsageError(f"--arm {arm.name}: unknown config key {key}")
        config.override(out, key, value, f"--arm {arm.name}")
    out.agent.seed += r
    try:
        Config.model_validate(out.model_dump())  # what spans sections (the screening budget under the budget)
    except ValidationError as e:
        raise UsageError(f"--arm {arm.name}: {config.describe(e)}") from None
    return out


def curve(trials: list[TrialRecord], goal: str) -> list[list[float]]:
    """The in-loop estimate of the best's gain over the baseline after each trial, against the compute spent."""
    base = next((t for t in trials if t.n == 0 and t.metric is not None), None)
    if base is None or base.metric is None:
        return []
    sign, spent, best, out = (-1.0 if goal == "minimize" else 1.0), 0.0, base.metric, []
    for t in trials:
        spent += t.seconds
        if t.status in (Status.BASELINE, Status.KEEP) and t.metric is not None:
            best = t.metric
        out.append([round(spent, 3), sign * (best - base.metric)])
    return out


def silent(line: str) -> None:
    """The default `say` (a function of its module, so a Study can go to a session's process)."""


class Study:
    def __init__(self, cfg: Config, name: str, arms: list[Arm], sessions: int, compute_s: float,
                 max_trials: int | None, seeds: int, say: Callable[[str], None] = silent) -> None:
        if len({a.name for a in arms}) != len(arms) or not arms:
            raise UsageError("--arm: give each arm once, with a name of its own")
        self.cfg, self.name, self.arms, self.say = cfg, name, arms, say
        self.sessions, self.compute_s, self.max_trials, self.seeds = sessions, compute_s, max_trials, seeds
        self.dir = project.state_dir(cfg, f"study-{name}")
        self.path = self.dir / STATE
        self.settings = {"arms": {a.name: a.overrides for a in arms}, "sessions": sessions, "compute_s": compute_s,
                         "max_trials": max_trials, "seeds": seeds}
        self.done: dict[tuple[str, int], Outcome] = {}
        if self.path.is_file():
            stored = json.loads(self.path.read_text())
            if stored["settings"] != json.loads(json.dumps(self.settings)):
                raise UsageError(f"study {name!r} was started with other settings ({self.path}); keep them to resume "
                                 f"it, or pass another --name")
            self.done = {(o["arm"], o["r"]): Outcome(**o) for o in stored["outcomes"]}

    def run(self, parallel: int = 1) -> list[Outcome]:
        for arm in self.arms:
            for r in range(self.sessions):
                arm_config(self.cfg, arm, r)  # every arm's settings are checked before anything runs
        todo = [(arm, r) for r in range(self.sessions) for arm in self.arms if (arm.name, r) not in self.done]
        if parallel > 1 and len(todo) > 1:
            from nightlab.study_pool import run_parallel

            run_parallel(self, todo, min(parallel, len(todo)))
        else:
            for arm, r in todo:
                self.record((arm.name, r), self.session(arm, r))
        return self.outcomes()

    def record(self, key: tuple[str, int], outcome: Outcome) -> None:
        self.done[key] = outcome
        self.save()

    def tag(self, arm: Arm, r: int) -> str:
        return f"study-{self.name}-{arm.name}-{r}"

    def outcomes(self) -> list[Outcome]:
        return [self.done[k] for k in sorted(self.done, key=lambda k: (k[1], [a.name for a in self.arms].index(k[0])))
                if k[0] in {a.name for a in self.arms}]

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": self.settings,
                                   "outcomes": [asdict(o) for o in self.outcomes()]}, indent=1))
        tmp.replace(self.path)

    def session(self, arm: Arm, r: int, gpus: str | None = None) -> Outcome:
        """Session r of `arm` under its tag's lock; `gpus`: the `[sandbox] gpus` of its lane when run in parallel."""
        cfg, tag = arm_config(self.cfg, arm, r), self.tag(arm, r)
        if gpus is not None:
            cfg.sandbox.gpus = gpus
        self.say(f"{arm.name} session {r + 1}/{self.sessions} (tag {tag})")
        with tag_lock(project.state_dir(cfg, tag)):
            return self._session(cfg, arm, r, tag)

    def _session(self, cfg: Config, arm: Arm, r: int, tag: str) -> Outcome:
        from nightlab.session import run_session

        def notify(event: Event, rec: TrialRecord) -> None:
            if event == Event.DONE:
                self.say(f"  trial {rec.n} {rec.status} {rec.metric if rec.metric is not None else '—'}")

        stopped = run_session(cfg, tag, self.max_trials, None, notify, self.compute_s)
        ledger = Ledger(project.state_dir(cfg, tag) / "ledger.sqlite")
        try:
            trials = ledger.trials()
            gain, select_gain, note = self._verified(cfg, tag, ledger, trials)
        finally:
            ledger.close()
        on_select = f", on the selection split {select_gain:+.5g}" if select_gain is not None else ""
        self.say(f"  verified gain {gain:+.5g}{on_select}{f' ({note})' if note else ''}")
        return Outcome(arm.name, r, tag, gain, sum(t.seconds for t in trials), len(trials) - 1,
                       sum(t.status == Status.KEEP for t in trials), stopped, note, curve(trials, cfg.metric.goal),
                       select_gain)

    def _verified(self, cfg: Config, tag: str, ledger: Ledger,
                  trials: list[TrialRecord]) -> tuple[float, float | None, str]:
        """The final best against the baseline on fresh seeds, on validation and on the selection split when there
        is one (a verify from before an interruption counts)."""
        from nightlab import verify

        select = bool(cfg.data.select)
        if not any(t.status == Status.KEEP for t in trials):
            return 0.0, 0.0 if select else None, "nothing kept"
        rows = {row["kind"]: row for row in ledger.latest_verify() or []}
        if "val" not in rows or (select and "select-pair" not in rows):
            verify.Verifier(cfg, tag, ledger, verify.Options(seeds=self.seeds, select_pair=select),
                            lambda what: None).run()
            rows = {row["kind"]: row for row in ledger.latest_verify() or []}
        val, other = rows.get("val"), rows.get("select-pair")
        if val is None or val["effect"] is None:
            return 0.0, None, f"verify failed: {val['note'] if val else 'no result'}"
        if not select:
            return float(val["effect"]), None, ""
        if other is None or other["effect"] is None:
            return float(val["effect"]), None, f"selection split failed: {other['note'] if other else 'no result'}"
        return float(val["effect"]), float(other["effect"]), ""


def load_outcomes(path: Path) -> list[Outcome]:
    return [Outcome(**o) for o in json.loads(path.read_text())["outcomes"]]
