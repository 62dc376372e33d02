"""Optional MLflow logging (`[report] mlflow = true`): one MLflow run per trial.

Params: the trial's description, status, phase, commit, seed, hypothesis; metrics: every reported
value plus delta and seconds; artifacts: the trial's diff.patch and metrics.json. A resumed tag does
not log a trial twice: runs carry `nightlab.tag` and `nightlab.trial` tags, looked up first, and the
trials of the ledger that the store lacks are logged when a run starts.

The default store is a SQLite database beside the ledger, which MLflow 3 opens as it is (`mlflow ui
--backend-store-uri sqlite:///…`); its file store (`mlruns/`, nightlab's earlier default) it refuses
unless MLFLOW_ALLOW_FILE_STORE is set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from nightlab import project
from nightlab.agents import require
from nightlab.config import Config
from nightlab.ledger import Ledger, TrialRecord
from nightlab.types import Status

log = logging.getLogger("nightlab.report")
STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
OLD_STORE = "mlruns"  # the file store nightlab used by default before


def default_uri(cfg: Config, tag: str) -> str:
    return f"sqlite:///{project.state_dir(cfg, tag) / STORE}"


def tracking_uri(cfg: Config, tag: str) -> str:
    """[report] mlflow_uri, else MLFLOW_TRACKING_URI, else a SQLite store beside the ledger."""
    uri = cfg.report.mlflow_uri
    if not uri:
        return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(cfg, tag)
    for scheme in ("file:", "sqlite:///"):  # a relative path means one in the project, not in the cwd
        rest = uri.removeprefix(scheme)
        if uri.startswith(scheme) and not rest.startswith("/"):
            return f"{scheme}{(cfg.root / rest).resolve()}"
    return uri


def _sqlite_file(uri: str) -> Path | None:
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if uri.startswith("sqlite:///") and path.startswith("/") else None


def opened_with(cfg: Config, tag: str, shown: Callable[[Path], str] = str) -> str:
    """How a user opens the tag's store: the `mlflow ui` command for a local database, else the URI."""
    uri = tracking_uri(cfg, tag)
    db = _sqlite_file(uri)
    if db is None:
        return uri
    where = shown(db)
    return f"mlflow ui --backend-store-uri sqlite:///{where}"


class MlflowLogger:
    def __init__(self, cfg: Config, tag: str) -> None:
        require("mlflow", "mlflow")
        self.uri = tracking_uri(cfg, tag)
        if self.uri.startswith("sqlite:"):
            require("sqlalchemy", "mlflow")  # mlflow-skinny alone has no database store
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("file:"):
            # MLflow 3 refuses a file store unless asked explicitly; one named in the config was asked for
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.cfg, self.tag = cfg, tag
        self.state = project.state_dir(cfg, tag)
        self._say_if_moved()
        self.client = MlflowClient(tracking_uri=self.uri)
        name = cfg.report.mlflow_experiment or f"nightlab/{tag}"
        found = self.client.get_experiment_by_name(name)
        db = _sqlite_file(self.uri)
        # a database store keeps no artifacts; without a location MLflow would put them under the cwd
        where = (db.parent / ARTIFACTS).as_uri() if db else None
        self.experiment = found.experiment_id if found else self.client.create_experiment(name, where)
        self.done = self._logged()

    def _say_if_moved(self) -> None:
        old = self.state / OLD_STORE
        if self.uri == default_uri(self.cfg, self.tag) and old.is_dir() and not (self.state / STORE).exists():
            log.info("MLflow: this tag's runs now go to %s (a database MLflow 3 opens as it is); its trials are "
                     "logged there from the ledger, and the old file store %s is left as it was",
                     self.uri, old)

    def _logged(self) -> set[int]:
        """The trials of this tag the store already has (the experiment may be shared with other tags)."""
        found: set[int] = set()
        token = None
        while True:
            page = self.client.search_runs([self.experiment], f"tags.`nightlab.tag` = '{self.tag}'",
                                           max_results=1000, page_token=token)
            found |= {int(r.data.tags["nightlab.trial"]) for r in page if "nightlab.trial" in r.data.tags}
            token = page.token
            if not token:
                return found

    def backlog(self) -> list[TrialRecord]:
        """Finished trials of the ledger that the store lacks: a resumed tag, or one that logged elsewhere."""
        path = self.state / "ledger.sqlite"
        if not path.exists():
            return []
        ledger = Ledger(path)
        try:
            return [t for t in ledger.trials() if t.status != Status.RUNNING and t.n not in self.done]
        finally:
            ledger.close()

    def log(self, rec: TrialRecord) -> None:
        if rec.n in self.done:
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
        values |= {"delta": rec.delta, "seconds": rec.seconds, "agent_seconds": rec.agent_seconds,
                   "cost_usd": rec.cost_usd}
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.client.log_metric(rid, key, float(value), step=rec.n)
        for name in ("diff.patch", "metrics.json"):
            path: Path = self.state / "runs" / str(rec.n) / name
            if path.is_file() and path.stat().st_size:
                self.client.log_artifact(rid, str(path))
        self.client.set_terminated(rid, status="FINISHED" if rec.status in ("baseline", "keep", "discard")
                                   else "FAILED")
        self.done.add(rec.n)
