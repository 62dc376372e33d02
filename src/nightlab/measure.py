"""One measured run: the sandboxed training run, the trusted evaluator, integrity checks, the metrics that count."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from nightlab import metrics, per_example, project
from nightlab.config import Config
from nightlab.errors import TrialInvalid
from nightlab.integrity import clear, data_fingerprints
from nightlab.per_example import Examples
from nightlab.sandbox import Sandbox
from nightlab.types import RunResult, RunSpec
from nightlab.workspace import changed, checksums


@dataclass
class Measurement:
    values: dict[str, float]  # every metric that counted
    examples: Examples | None = None  # the primary metric's per-example values, when the run reported them


def measure(cfg: Config, sandbox: Sandbox, spec: RunSpec, seconds: list[float],
            data: list[str] | None = None) -> Measurement:
    """Run `spec` (and the trusted evaluator, if configured); return its metrics or raise how it failed.

    `seconds` collects each run's duration, so time is accounted even when the trial fails. `data`: the
    data paths to fingerprint around the run (default: what trials see).
    """
    data = project.visible_data(cfg) if data is None else data
    before, data_before = checksums(spec.cwd, cfg.project.protected), data_fingerprints(spec.cwd, data)
    result = _logged_run(sandbox, spec)
    seconds.append(result.seconds)
    measured = spec
    if cfg.metric.evaluate:
        metrics.read_exit(result)  # training only writes artifacts; what it printed or wrote does not count
        measured = _evaluator_spec(cfg, spec)
        result = _logged_run(sandbox, measured)
        seconds.append(result.seconds)
    if bad := changed(before, checksums(spec.cwd, cfg.project.protected)):
        raise TrialInvalid(f"protected file changed during the run: {', '.join(bad)}")
    if bad := changed(data_before, data_fingerprints(spec.cwd, data)):
        raise TrialInvalid(f"data changed during the run: {', '.join(bad)}")
    values = metrics.read(result, measured.run_dir, cfg.metric.name, stdout=not cfg.metric.evaluate)
    name = cfg.metric.name
    examples = per_example.read(measured.run_dir, metrics.load_json(measured.run_dir / "metrics.json"), name,
                                values[name])
    if measured is not spec or not (spec.run_dir / "metrics.json").is_file():
        _write_json(spec.run_dir / "metrics.json", values)  # the run directory records what counted
    metrics.check_constraints(values, cfg.metric.constraints)
    return Measurement(values, examples)


def _evaluator_spec(cfg: Config, train: RunSpec) -> RunSpec:
    """The trusted evaluator: a fresh run with a directory of its own; the training outputs are read-only to it."""
    eval_dir = train.run_dir / "evaluate"
    clear(eval_dir)  # whatever training left under that name
    eval_dir.mkdir()
    return replace(train, command=cfg.metric.evaluate, run_dir=eval_dir, log_name="evaluate.log",
                   readonly=[*train.readonly, train.run_dir],
                   env={**train.env, "NIGHTLAB_TRAIN_DIR": str(train.run_dir)})


def _logged_run(sandbox: Sandbox, spec: RunSpec) -> RunResult:
    result = sandbox.run(spec)
    name = "sandbox.json" if spec.log_name == "run.log" else f"sandbox-{Path(spec.log_name).stem}.json"
    _write_json(spec.run_dir / name, {"backend": sandbox.name, "command": spec.command, "cwd": str(spec.cwd),
                                      "seed": spec.seed, "seconds": result.seconds, "exit_code": result.exit_code,
                                      "exit_reason": result.reason, **result.details})
    return result


def _write_json(path: Path, data: object) -> None:
    clear(path)  # never write through a link a run planted in its run directory
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
