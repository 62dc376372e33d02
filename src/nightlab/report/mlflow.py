"""Optional MLflow logging (`[report] mlflow = true`): one MLflow run per trial.

Params: the trial's description, status, phase, commit, seed, hypothesis; metrics: every reported
value plus delta and seconds; artifacts: the trial's diff.patch and metrics.json. A resumed tag does
not log a trial twice: runs carry a `nightlab.trial` tag that is looked up first.
"""

from __future__ import annotations

import os
from pathlib import Path

from nightlab import project
from nightlab.agents import require
from nightlab.config import Config
from nightlab.ledger import TrialRecord


def tracking_uri(cfg: Config, tag: str) -> str:
    """[report] mlflow_uri, else MLFLOW_TRACKING_URI, else a file store beside the ledger."""
    if cfg.report.mlflow_uri:
        uri = cfg.report.mlflow_uri
        if uri.startswith("file:") and not uri.startswith("file:/"):  # relative: against the project
            uri = f"file:{(cfg.root / uri[5:]).resolve()}"
        return uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"file:{project.state_dir(cfg, tag) / 'mlruns'}"


class MlflowLogger:
    def __init__(self, cfg: Config, tag: str) -> None:
        require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg, tag)
        if self.uri.startswith("file:"):
            # MLflow 3 refuses a file store unless asked explicitly; a local store is what was configured
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.cfg, self.tag = cfg, tag
        self.client = MlflowClient(tracking_uri=self.uri)
        name = cfg.report.mlflow_experiment or f"nightlab/{tag}"
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.state = project.state_dir(cfg, tag)

    def logged(self, n: int) -> bool:
        runs = self.client.search_runs([self.experiment], f"tags.`nightlab.trial` = '{n}'", max_results=1)
        return bool(runs)

    def log(self, rec: TrialRecord) -> None:
        if self.logged(rec.n):
            return
        run = self.client.create_run(self.experiment, run_name=f"trial-{rec.n}",
                                     tags={"nightlab.trial": str(rec.n), "nightlab.tag": self.tag,
                                           "nightlab.status": rec.status})
        rid = run.info.run_id
        params = {"trial": rec.n, "status": rec.status, "description": rec.description[:500],
                  "phase": rec.phase, "commit": rec.commit_sha, "parent": rec.parent, "seed": rec.seed,
                  "hypothesis": rec.hypothesis[:500], "reason": rec.reason[:500]}
        for key, value in params.items():
            if value not in ("", None):
                self.client.log_param(rid, key, value)
        values = dict(rec.metrics)
        if rec.metric is not None:
            values[self.cfg.metric.name] = rec.metric
        values |= {"delta": rec.delta, "seconds": rec.seconds, "cost_usd": rec.cost_usd}
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.client.log_metric(rid, key, float(value), step=rec.n)
        for name in ("diff.patch", "metrics.json"):
            path: Path = self.state / "runs" / str(rec.n) / name
            if path.is_file() and path.stat().st_size:
                self.client.log_artifact(rid, str(path))
        self.client.set_terminated(rid, status="FINISHED" if rec.status in ("baseline", "keep", "discard")
                                   else "FAILED")
