"""The offline default agent: Optuna TPE over the UPPER_CASE literal constants of the editable files, by default
in small moves of one to `agent.knobs` constants around the trial's starting state (moves.py).

Everything that must survive a resume lives in the study (state_dir/optuna.sqlite): the frozen search
space and pending baseline as study attributes, and each nightlab trial number as an attribute of the
optuna trial that serves it.
"""

from __future__ import annotations

import math
import random
import threading
from pathlib import Path
from typing import Any

from nightlab import crashpoint
from nightlab.agents import Agent, moves, require
from nightlab.agents.constants import (
    Constant,
    Value,
    find_constants,
    format_value,
    parse_value,
    rewrite,
    skipped_by_default,
)
from nightlab.config import Config, SearchParam
from nightlab.errors import AgentFailed, UsageError
from nightlab.types import Brief, Proposal, Status, is_finite

DB_NAME = "optuna.sqlite"
STUDY_NAME = "nightlab"
SPACE_ATTR = "nightlab_space"  # study attr: {key: {file, name, baseline, kind, ...}}
PENDING_ATTR = "nightlab_pending_baseline"  # study attr: a baseline metric seen before the space existed
PENALIZED_ATTR = "nightlab_penalized"  # study attr: optuna trial numbers told a penalty, not a real metric
TRIAL_ATTR = "nightlab_trial"  # trial attr: the nightlab trial it was proposed for
BASELINE_ATTR = "nightlab_baseline"  # trial attr: marks the baseline point
MOVED_ATTR = "nightlab_moved"  # trial attr: the constants a small move changed (absent: a global point)
MAX_ASKS = 5
# Statuses whose metric, even when finite, must not be learned from: the run broke the rules.
UNTRUSTED = {Status.INVALID, Status.REJECTED}


class OptunaAgent(Agent):
    # Proposals may overlap with other trials' runs and outcomes (parallel slots): one lock guards the study,
    # and the constant-liar sampler keeps asks from landing next to points still in flight.
    concurrent = True
    # A trial's point is absolute values: when the best moves on, the loop asks again for the same trial and
    # gets the same point written onto the new best (not a cherry-picked diff, which would conflict).
    reproposes = True

    def __init__(self, config: Config, state_dir: Path) -> None:
        self.lock = threading.RLock()
        self.optuna: Any = require("optuna", "optuna")
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)
        self.config = config
        self.state_dir = Path(state_dir)
        self._study: Any = None

    # -- the Agent role --------------------------------------------------------------------------

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        with self.lock:
            return self._propose(Path(workspace), brief)

    def _propose(self, workspace: Path, brief: Brief) -> Proposal:
        study = self._get_study(brief.metric.goal)
        space = self._space(study, workspace)
        if not space:
            raise UsageError(
                f"optuna agent: no searchable UPPER_CASE int/float/bool constants in {', '.join(self._files())}"
                f" (names containing SEED, PATH, DIR, FILE, DEVICE, BUDGET or TIME, and strings, are searched"
                f" only when agent.search names them)"
            )
        self._flush_baseline(study, space)
        current = constants_now(workspace, space)
        number, asked = self._params_for(study, brief.trial, space, current)
        params = {key: asked[key] for key in space if key in asked}  # the file's order, however optuna stored them
        changes: dict[str, dict[Constant, str]] = {}
        described = []
        for key, value in params.items():
            const = current.get(key)
            text = format_value(value, const.text if const else "")
            if const is not None and _differs(const, text):
                changes.setdefault(space[key]["file"], {})[const] = text
                described.append(f"{key} {const.text} → {text}")
        if not described:
            raise AgentFailed(f"no new point: optuna trial {number} matches the current files")
        for rel, edits in changes.items():
            path = workspace / rel
            path.write_bytes(rewrite(path.read_bytes(), edits))
        written = {key: parse_value(format_value(v)) for key, v in params.items()}
        transcript = f"optuna trial {number} for nightlab trial {brief.trial}\n" + "".join(
            f"  {key} = {format_value(v)}\n" for key, v in written.items()
        )
        return Proposal(description=", ".join(described), transcript=transcript, params=written)

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        with self.lock:
            self._observe(trial, status, metric)

    def _observe(self, trial: int, status: Status, metric: float | None) -> None:
        study = self._get_study(self.config.metric.goal)
        if status == Status.BASELINE:
            if metric is not None and is_finite(metric):
                self._observe_baseline(study, metric)
            return
        frozen = _trial_of(study, trial)
        if frozen is None or frozen.state != self.optuna.trial.TrialState.RUNNING:
            return  # not ours, or already told (a repeated observe after a resume)
        if status == Status.LOST:  # the infrastructure's failure (already retried) says nothing of the point
            study.tell(frozen.number, state=self.optuna.trial.TrialState.FAIL)
            return
        if metric is not None and is_finite(metric) and status not in UNTRUSTED:
            study.tell(frozen.number, float(metric))
            return
        worse = penalty(self.optuna, study)
        if worse is None:
            study.tell(frozen.number, state=self.optuna.trial.TrialState.FAIL)
            return
        # Record the penalty before telling it, so it never passes for a real result in penalty().
        study.set_user_attr(PENALIZED_ATTR, [*study.user_attrs.get(PENALIZED_ATTR, []), frozen.number])
        study.tell(frozen.number, worse)

    # -- study, space and baseline ---------------------------------------------------------------

    def _get_study(self, goal: str) -> Any:
        if self._study is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            storage = f"sqlite:///{(self.state_dir / DB_NAME).resolve()}"
            study = self.optuna.create_study(
                study_name=STUDY_NAME, storage=storage, direction=goal, load_if_exists=True
            )
            self._fail_orphans(study)
            self._study = study
        return self._study

    def _fail_orphans(self, study: Any) -> None:
        """A point asked for but never given to a nightlab trial (killed in between) is failed: left RUNNING, the
        constant-liar sampler would count it as a bad result forever; so is one enqueued but never asked for.
        Nothing is in flight yet when a study loads."""
        states = self.optuna.trial.TrialState
        for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            if TRIAL_ATTR not in t.user_attrs:
                study.tell(t.number, state=states.FAIL)
        # A small move's fixed values enqueued but never asked for (killed in between): the next ask would take them.
        for _ in study.get_trials(deepcopy=False, states=(states.WAITING,)):
            study.tell(study.ask(), state=states.FAIL)

    def _files(self) -> list[str]:
        return list(self.config.project.editable)

    def _space(self, study: Any, source: Path) -> dict[str, dict]:
        """The search space, frozen from `source` the first time so later keeps never move it."""
        if SPACE_ATTR in study.user_attrs:
            return study.user_attrs[SPACE_ATTR]
        space = build_space(source, self._files(), self.config.agent.search)
        if space:
            study.set_user_attr(SPACE_ATTR, space)
        return space

    def _observe_baseline(self, study: Any, metric: float) -> None:
        # The baseline may come before any propose: freeze the space from the project directory then.
        space = self._space(study, self.config.root)
        if not space:
            study.set_user_attr(PENDING_ATTR, float(metric))
            return
        add_baseline(self.optuna, study, space, float(metric))

    def _flush_baseline(self, study: Any, space: dict[str, dict]) -> None:
        pending = study.user_attrs.get(PENDING_ATTR)
        if pending is not None:
            add_baseline(self.optuna, study, space, pending)

    # -- proposing -------------------------------------------------------------------------------

    def _params_for(
        self, study: Any, trial: int, space: dict[str, dict], current: dict[str, Constant]
    ) -> tuple[int, dict[str, Value]]:
        """The params for `trial`: the ones it already had (a resumed or rebased trial), else a fresh sample."""
        earlier = _trial_of(study, trial)
        if earlier is not None:
            moved = earlier.user_attrs.get(MOVED_ATTR)
            if moved is None:  # a global point: all of it, wherever it is written
                return earlier.number, dict(earlier.params)
            # A small move: the same values of the constants it moved, on whatever state it starts from now
            # (a rebase); recorded as a point of its own when that state differs, so TPE learns what ran.
            want = {k: v for k, v in fixed_now(space, current).items() if k not in moved}
            want |= {k: earlier.params[k] for k in moved if k in earlier.params}
            if want == dict(earlier.params):
                return earlier.number, want
            study.tell(earlier.number, state=self.optuna.trial.TrialState.FAIL)
            study.enqueue_trial(want)
            again = study.ask(distributions(self.optuna, {k: space[k] for k in want}))
            again.set_user_attr(MOVED_ATTR, moved)
            again.set_user_attr(TRIAL_ATTR, trial)
            return again.number, dict(again.params)
        agent = self.config.agent
        # Seeded by the trial's number: a resumed run asks what an uninterrupted one would have (given the same
        # results so far), and never replays the random start-up point of an earlier trial.
        seed = agent.seed + 7919 * trial
        study.sampler = self.optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                                        n_startup_trials=agent.startup_trials)
        rng = random.Random(seed)
        for _ in range(MAX_ASKS):
            asked, moved = self._ask(study, space, current, rng)
            crashpoint.reached("optuna.asked")
            params = dict(asked.params)
            if any(_differs(current[k], format_value(v, current[k].text)) for k, v in params.items() if k in current):
                if moved is not None:
                    asked.set_user_attr(MOVED_ATTR, moved)
                asked.set_user_attr(TRIAL_ATTR, trial)
                return asked.number, params
            # Failed trials are left out of TPE's model, so a duplicate costs nothing but the ask.
            study.tell(asked, state=self.optuna.trial.TrialState.FAIL)
        raise AgentFailed(f"no new point: {MAX_ASKS} samples in a row equal the current values")

    def _ask(self, study: Any, space: dict[str, dict], current: dict[str, Constant],
             rng: random.Random) -> tuple[Any, list[str] | None]:
        """A new optuna trial: a small move of a few constants (agent.knobs > 0), else a point anywhere."""
        knobs = self.config.agent.knobs
        if not knobs:
            return study.ask(distributions(self.optuna, space)), None
        outside = {k for k, dim in space.items() if k not in current or not moves.within(dim, current[k].value)}
        moving = sorted({*moves.pick(rng, sorted(space), knobs), *outside})
        dists, fixed = moves.local_point(self.optuna, space, current, moving, rng, self.config.agent.step)
        study.enqueue_trial(fixed)
        return study.ask(dists), moving


def add_baseline(optuna: Any, study: Any, space: dict[str, dict], metric: float) -> None:
    """Add the original values as a completed trial, once."""
    if not any(t.user_attrs.get(BASELINE_ATTR) for t in study.get_trials(deepcopy=False)):
        dists = distributions(optuna, space)
        # A config range may exclude the original value; optuna then cannot hold it for that param.
        params = {k: d["baseline"] for k, d in space.items() if moves.within(d, d["baseline"])}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=metric,
                user_attrs={BASELINE_ATTR: True},
            )
        )
    if PENDING_ATTR in study.user_attrs:
        study.set_user_attr(PENDING_ATTR, None)


def penalty(optuna: Any, study: Any) -> float | None:
    """A value for a run without a usable metric: the worst real result so far plus a margin.

    TPE splits trials into good and bad by rank, so the penalty only has to rank last to steer the
    search away; the small margin keeps it from tying the worst real run without distorting the
    scale of the study's values. None when nothing real has completed (the trial is told FAIL).
    """
    penalized = set(study.user_attrs.get(PENALIZED_ATTR, []))
    done = optuna.trial.TrialState.COMPLETE
    values = [t.value for t in study.get_trials(deepcopy=False, states=(done,)) if t.number not in penalized]
    if not values:
        return None
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    worst, best = (max(values), min(values)) if minimize else (min(values), max(values))
    margin = 0.1 * abs(worst - best) or 0.1 * abs(worst) or 1.0
    return worst + margin if minimize else worst - margin


def fixed_now(space: dict[str, dict], current: dict[str, Constant]) -> dict[str, Value]:
    """The current value of each constant that optuna can hold (it lies in its range)."""
    return {k: current[k].value for k, dim in space.items() if k in current and moves.within(dim, current[k].value)}


def distributions(optuna: Any, space: dict[str, dict]) -> dict[str, Any]:
    """Optuna's distribution for each dimension of the space."""
    return {key: moves.full(optuna, dim) for key, dim in space.items()}


def constants_now(workspace: Path, space: dict[str, dict]) -> dict[str, Constant]:
    """Each searched constant as it stands in the workspace now."""
    scanned: dict[str, dict[str, Constant]] = {}
    for rel in {dim["file"] for dim in space.values()}:
        path = workspace / rel
        try:
            scanned[rel] = find_constants(path.read_bytes()) if path.is_file() else {}
        except SyntaxError as e:
            raise AgentFailed(f"{rel}: cannot parse ({e.msg}, line {e.lineno})") from None
    return {key: scanned[d["file"]][d["name"]] for key, d in space.items() if d["name"] in scanned[d["file"]]}


def build_space(root: Path, editable: list[str], search: dict[str, SearchParam]) -> dict[str, dict]:
    """One dimension per searchable constant of the editable .py files under `root`."""
    space: dict[str, dict] = {}
    for pattern in editable:
        for path in sorted(root.glob(pattern)) if not Path(pattern).is_absolute() else []:
            if path.suffix != ".py" or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            try:
                consts = find_constants(path.read_bytes())
            except SyntaxError as e:
                raise UsageError(f"{path}: cannot parse ({e.msg}, line {e.lineno})") from None
            for name, const in consts.items():
                key = name if name not in space else f"{rel}:{name}"  # same name in two files
                override = search.get(key) or search.get(name)
                if override is None and skipped_by_default(name):
                    continue
                dim = dimension(key, const.value, override)
                if dim is not None and key not in space:
                    space[key] = {"file": rel, "name": name, "baseline": const.value, **dim}
    return space


def dimension(key: str, value: Value, override: SearchParam | None) -> dict | None:
    """The default range for a constant's value, or the config's; None when it is not searched."""
    if override is not None and override.choices:
        return {"kind": "cat", "choices": list(override.choices)}
    if isinstance(value, bool):
        return {"kind": "cat", "choices": [False, True]}
    if isinstance(value, str):
        return None  # there is no sensible default set of alternatives for a string
    ranged = override is not None and (override.low is not None or override.high is not None)
    if isinstance(value, int) and value >= 2 and value & (value - 1) == 0 and not ranged:
        powers = [2**e for e in range(value.bit_length() + 2)]
        return {"kind": "cat", "choices": [p for p in powers if value / 4 <= p <= value * 4]}
    low, high = _default_range(value)
    if override is not None:
        low = override.low if override.low is not None else low
        high = override.high if override.high is not None else high
    if low is None or high is None:
        return None
    log = override.log if override is not None and override.log is not None else isinstance(value, float) and low > 0
    if isinstance(value, int):
        low, high = math.ceil(low), math.floor(high)
    if low >= high or (log and low <= 0):
        raise UsageError(f"agent.search.{key}: need low < high (and low > 0 for log), got low={low} high={high}")
    return {"kind": "int" if isinstance(value, int) else "float", "low": low, "high": high, "log": bool(log)}


def _default_range(value: int | float) -> tuple[float | None, float | None]:
    if isinstance(value, int):
        delta = max(1, abs(value) // 2)
        return (max(1, value - delta) if value >= 1 else value - delta), value + delta
    if value <= 0:
        return None, None  # no scale to search around: only a configured range
    high = value * 4
    if value < 1:
        # Values in (0, 1) are usually fractions (dropout, momentum, betas) that break at 1 or above:
        # stay below 1 rather than spend trials on guaranteed crashes.
        high = min(high, 1 - (1 - value) / 4)
    return value / 4, high


def _differs(const: Constant, text: str) -> bool:
    new = parse_value(text)
    return type(new) is not type(const.value) or new != const.value


def _trial_of(study: Any, trial: int) -> Any:
    """The latest optuna trial proposed for nightlab trial `trial`, or None."""
    for t in reversed(study.get_trials(deepcopy=False)):
        if t.user_attrs.get(TRIAL_ATTR) == trial:
            return t
    return None
