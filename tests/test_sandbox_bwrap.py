"""The bwrap backend: its command line, `auto`, the run record, and the loop running under it for real."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nightlab.errors import UsageError
from nightlab.sandbox import load_sandbox, probe
from nightlab.sandbox.bwrap import build_argv, gpu_devices
from nightlab.types import RunSpec
from nlkit import CLI, idea, make_project, one_line_error, sub
from prockit import host_pids_with


def _spec(tmp_path: Path, **kw) -> RunSpec:
    (tmp_path / "wt").mkdir(exist_ok=True)
    (tmp_path / "run").mkdir(exist_ok=True)
    kw = {"cwd": tmp_path / "wt", **kw}
    return RunSpec(command="python train.py", run_dir=tmp_path / "run", budget_s=1, timeout_s=5, seed=0, trial=0, **kw)


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_has_every_hardening_rule(tmp_path: Path) -> None:
    argv, mounts = build_argv(_spec(tmp_path), "bwrap", home_dirs=[str(tmp_path / "home")])
    for flag in ("--unshare-user", "--disable-userns", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in argv, flag
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--uid") + 1] == "1000"
    tmpfs = _pairs(argv, "--tmpfs")
    assert "/tmp" in tmpfs and "/run" in tmpfs
    # mounts apply in order: / read-only first, the tmpfs over it, the writable run dir last of the binds
    assert argv.index("--ro-bind") < argv.index("--tmpfs") < argv.index("--bind")
    assert _pairs(argv, "--bind") == [str((tmp_path / "run").resolve())]
    assert [m for m in mounts if m["mode"] == "rw"] == [{"path": str((tmp_path / "run").resolve()), "mode": "rw"}]
    env = dict(zip(_pairs(argv, "--setenv"), [argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"]))
    assert set(env) >= {"NIGHTLAB_RUN_DIR", "NIGHTLAB_SEED", "PATH", "HOME"} and env["HOME"] == str(tmp_path / "run")
    assert argv[argv.index("--") + 1] == sys.executable  # `python` is the harness's interpreter


def test_the_interpreter_is_rebound_after_the_home_that_hides_it(tmp_path: Path) -> None:
    prefix = Path(sys.base_prefix).resolve()
    argv, _ = build_argv(_spec(tmp_path), "bwrap", home_dirs=[str(prefix.parent)])
    assert str(prefix.parent) in _pairs(argv, "--tmpfs")
    ro = [argv[i + 2] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert str(prefix) in ro
    assert argv.index(str(prefix.parent)) < argv.index(str(prefix))


def test_project_hidden_data_readonly_test_split_masked(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "test.txt").write_text("labels")
    (proj / "data" / "train.txt").write_text("rows")
    spec = _spec(tmp_path, cwd=proj, hidden=[proj], readonly=[proj / "data" / "train.txt"],
                 masked=[proj / "data" / "test.txt", proj / ".nightlab"])
    argv, mounts = build_argv(spec, "bwrap", home_dirs=[])
    modes = {m["path"]: m["mode"] for m in mounts}
    assert str(proj.resolve()) in _pairs(argv, "--tmpfs") and str(proj.resolve()) in _pairs(argv, "--remount-ro")
    assert modes[str(proj / "data" / "train.txt")] == "ro"
    assert modes[str(proj / "data" / "test.txt")] == "hidden"  # /dev/null bound over it
    assert str(proj / ".nightlab") not in modes  # absent here, so nothing to mask


def test_gpu_devices_are_dev_bound_when_requested(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1", "nvidia-modeset"):
        (dev / name).touch()
    assert gpu_devices("none", dev) == [] and gpu_devices("", dev) == []
    assert {p.name for p in gpu_devices("all", dev)} == {"nvidiactl", "nvidia-uvm", "nvidia-modeset", "nvidia0", "nvidia1"}
    assert {p.name for p in gpu_devices("1", dev)} == {"nvidiactl", "nvidia-uvm", "nvidia-modeset", "nvidia1"}
    argv, mounts = build_argv(_spec(tmp_path, gpus="0"), "bwrap", dev=dev, home_dirs=[])
    assert str(dev / "nvidia0") in _pairs(argv, "--dev-bind") and str(dev / "nvidia1") not in _pairs(argv, "--dev-bind")
    assert gpu_devices("all", tmp_path / "empty") == []  # no GPU (as on this machine): nothing bound


def test_auto_selects_bwrap_here() -> None:
    assert probe.probe_bwrap()[0], probe.probe_bwrap()[1]
    assert load_sandbox("auto").name == "bwrap"


def test_auto_refuses_with_a_paragraph_when_nothing_works(monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine without any working sandbox cannot be made here; the probes are replaced, nothing else.
    monkeypatch.setattr(probe, "probe_bwrap", lambda: (False, "bwrap: setting up uid map: Permission denied"))
    monkeypatch.setattr(probe, "probe_engine", lambda engine: (False, f"no {engine} command"))
    with pytest.raises(UsageError) as e:
        load_sandbox("auto")
    text = str(e.value)
    assert "\n" not in text
    assert "uid map" in text and "bubblewrap" in text and "--sandbox process" in text and "AppArmor" in text


def test_process_backend_only_when_chosen_and_then_warns(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"sandbox": {"backend": "auto"}})
    quiet = proj.nl("trial")
    assert quiet.returncode == 0, quiet.stderr
    assert "WITHOUT isolation" not in quiet.stderr
    loud = proj.nl("trial", "--sandbox", "process")
    assert loud.returncode == 0 and "WITHOUT isolation" in loud.stderr


def test_unknown_sandbox_is_one_line(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    line = one_line_error(proj.nl("trial", "--sandbox", "chroot"))
    assert "sandbox" in line


ENV_TRAIN = '''import json, os, sys
from pathlib import Path
LR = 0.1
seen = {"env": dict(os.environ), "exe": sys.executable, "cwd": os.getcwd(),
        "train": Path("data/train.txt").read_text(), "test": os.path.exists("data/test.txt")}
Path(os.environ["NIGHTLAB_RUN_DIR"], "seen.json").write_text(json.dumps(seen))
print(f"val_loss: {1.0 + LR}")
print("peak_memory_gb: 0.1")
'''


def test_the_loop_under_bwrap_records_how_each_run_was_sandboxed(tmp_path: Path) -> None:
    cfg = {"sandbox": {"backend": "auto", "memory_gb": 2, "max_log_mb": 5, "max_run_dir_mb": 100},
           "data": {"train": ["data/train.txt"], "test": ["data/test.txt"]}}
    proj = make_project(tmp_path, train=ENV_TRAIN, config=cfg, extra_env={"ANTHROPIC_API_KEY": "sk-x"},
                        ideas=[idea("lower LR", sub("LR = 0.1", "LR = 0.05"))])
    proj.write("data/train.txt", "rows\n")
    proj.write("data/test.txt", "labels\n")
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]
    for n in (0, 1):
        run_dir = proj.state() / "runs" / str(n)
        seen = json.loads((run_dir / "seen.json").read_text())
        assert seen["exe"] == sys.executable and seen["train"] == "rows\n" and seen["test"] is False
        assert "ANTHROPIC_API_KEY" not in seen["env"]
        assert Path(seen["cwd"]) == proj.worktree().resolve()
        record = json.loads((run_dir / "sandbox.json").read_text())
        assert record["backend"] == "bwrap" and record["exit_reason"] == "" and record["network"] == "none"
        modes = {m["path"]: m["mode"] for m in record["mounts"]}
        assert modes[str(run_dir.resolve())] == "rw"
        assert [p for p, m in modes.items() if m == "rw"] == [str(run_dir.resolve())]
        assert modes[str((proj.dir / "data" / "train.txt").resolve())] == "ro"
        assert modes[str(proj.dir.resolve())] == "hidden"
        assert record["limits"]["memory_bytes"] == 2 << 30 and record["limits"]["memory_via"] in ("cgroup v1", "cgroup v2", "RLIMIT_DATA")
        assert record["limits"]["max_log_mb"] == 5 and record["limits"]["max_run_dir_mb"] == 100


def test_ctrl_c_takes_the_sandboxed_run_down(tmp_path: Path) -> None:
    marker = f"nlmark{uuid.uuid4().hex}"
    train = f"import subprocess, time\nsubprocess.Popen(['sh', '-c', 'sleep 60 # {marker}'])\ntime.sleep(60)\n"
    proj = make_project(tmp_path, train=train, config={"sandbox": {"backend": "bwrap"}, "run": {"timeout_s": 120}})
    harness = subprocess.Popen([*CLI, "trial"], cwd=proj.dir, env=proj.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not host_pids_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host_pids_with(marker), "the run never started"
        harness.send_signal(signal.SIGINT)
        _, err = harness.communicate(timeout=15)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
    assert harness.returncode == 130 and "Traceback" not in err
    assert host_pids_with(marker) == []  # the whole sandbox went down with the harness
