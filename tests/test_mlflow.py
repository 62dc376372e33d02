"""MLflow end to end, opened as a user opens it: the default store is a SQLite database that MLflow 3 reads with
no special environment, through `MlflowClient` and through its own server (`mlflow ui`) on loopback; a tag that
logged to the old default file store moves to the database with every trial; a file store named in the config
still works. Real mlflow (the dev extra installs it), real server, nothing mocked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nlkit import Project, idea, make_project, sub

IDEAS = [
    idea("raise LR to 0.3", sub("LR = 0.1", "LR = 0.3")),  # 1 keep
    idea("lower LR to 0.0", sub("LR = 0.3", "LR = 0.0")),  # 2 discard
    idea("exit with code 3", sub("seed = int", "raise SystemExit(3)\nseed = int")),  # 3 crash
]
MLFLOW_BIN = Path(sys.executable).with_name("mlflow")


@pytest.fixture(autouse=True)
def no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing MLflow-specific in this process or in the CLI's (which inherits it): the store must open as it is."""
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)


def _runs(client, experiment: str) -> dict:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    found = client.search_runs([exp.experiment_id])
    runs = {int(r.data.tags["nightlab.trial"]): r for r in found}
    assert len(runs) == len(found), "a trial was logged twice"
    return runs


def _check_runs(client, proj: Project, tmp_path: Path) -> None:
    runs = _runs(client, "nightlab/t")
    assert sorted(runs) == [0, 1, 2, 3]
    ledger = {r["n"]: r for r in proj.ledger()}
    for n, run in runs.items():
        assert run.data.params["status"] == ledger[n]["status"]
        assert run.data.params["description"] == ledger[n]["description"]
        if ledger[n]["metric"] is not None:
            assert run.data.metrics["val_loss"] == pytest.approx(ledger[n]["metric"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert ("diff.patch" in artifacts) == (n > 0)
    assert runs[3].info.status == "FAILED" and runs[1].info.status == "FINISHED"  # 3 crashed, 1 was kept
    diff = Path(client.download_artifacts(runs[1].info.run_id, "diff.patch", str(tmp_path)))
    assert "+LR = 0.3" in diff.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def mlflow_ui(command: str, cwd: Path, env: dict[str, str], deadline_s: float = 180) -> Iterator[str]:
    """`mlflow ui …` as printed by nightlab, on 127.0.0.1 only; yields its URL once /health answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(MLFLOW_BIN), *command.split()[1:], "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = cwd / "mlflow-ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + deadline_s
        while not _healthy(url):
            assert proc.poll() is None, f"mlflow ui exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"mlflow ui not answering after {deadline_s}s:\n{log.read_text()}"
            time.sleep(0.5)  # a poll interval, not a wait for anything to happen
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and the workers it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_the_default_store_is_a_database_mlflow_opens_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = make_project(tmp_path, ideas=IDEAS, config={"report": {"mlflow": True}})
    proj.run("--max-trials", "2")
    proc = proj.run("--max-trials", "3")  # a resume logs only the new trial
    command = re.search(r"^mlflow: +(mlflow ui --backend-store-uri \S+)$", proc.stdout, re.M)
    assert command, proc.stdout
    assert command[1] == "mlflow ui --backend-store-uri sqlite:///.nightlab/t/mlflow.db"
    assert (proj.state() / "mlflow.db").is_file() and not (proj.state() / "mlruns").exists()
    assert not (proj.dir / "mlruns").exists()  # artifacts stay beside the store, not in the directory run from
    assert (proj.state() / "mlartifacts").is_dir()

    from mlflow.tracking import MlflowClient  # the dev extra installs mlflow

    monkeypatch.chdir(proj.dir)  # where the user is, so the printed (relative) URI means the same file
    uri = command[1].split()[-1]
    _check_runs(MlflowClient(tracking_uri=uri), proj, tmp_path)

    with mlflow_ui(command[1], proj.dir, proj.env) as url:
        _check_runs(MlflowClient(tracking_uri=url), proj, tmp_path / "via-server")
        query = urllib.request.quote("nightlab/t")
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={query}",
                                    timeout=30) as resp:
            assert json.load(resp)["experiment"]["name"] == "nightlab/t"
        with urllib.request.urlopen(url, timeout=30) as resp:  # the UI's page itself
            assert resp.status == 200 and "<html" in resp.read().decode().lower()


def test_a_tag_on_the_old_file_store_moves_to_the_database_with_every_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the old default: a file store in .nightlab/<tag>/mlruns (here named explicitly, as a config may still do)
    old_default = {"mlflow": True, "mlflow_uri": "file:.nightlab/t/mlruns"}
    proj = make_project(tmp_path, ideas=IDEAS, config={"report": old_default})
    proj.run("--max-trials", "2")
    assert not (proj.state() / "mlflow.db").exists()
    proj.config({"report": {"mlflow": True}})  # back to the default, as after an upgrade
    proj.commit_all("mlflow: the default store")
    proc = proj.run("--max-trials", "3")
    assert "now go to sqlite:///" in proc.stderr and "left as it was" in proc.stderr, proc.stderr

    from mlflow.tracking import MlflowClient

    _check_runs(MlflowClient(tracking_uri=f"sqlite:///{proj.state() / 'mlflow.db'}"), proj, tmp_path)
    # the old store is untouched (MLflow 3 opens a file store only when asked, as a named one is)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    old = _runs(MlflowClient(tracking_uri=f"file:{proj.state() / 'mlruns'}"), "nightlab/t")
    assert sorted(old) == [0, 1, 2]
