"""The bwrap profile for agent CLIs, run for real: network on, protected files and .git read-only."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from nightlab.sandbox.agent_profile import agent_argv
from nlkit import make_project

PROBE = r'''
import json, os, subprocess, sys, urllib.request
out = {}
def tryit(name, fn):
    try:
        out[name] = ["ok", str(fn())[:200]]
    except Exception as e:
        out[name] = ["failed", f"{type(e).__name__}: {e}"[:200]]
tryit("edit_train", lambda: open("train.py", "a").write("# edited\n"))
tryit("write_scratchpad", lambda: open("scratchpad.md", "w").write("notes\n"))
tryit("rename_over_train", lambda: (open("train.py.tmp", "w").write("X = 1\n"), os.replace("train.py.tmp", "train.py")))
tryit("edit_prepare", lambda: open("prepare.py", "a").write("# tampered\n"))
tryit("edit_program", lambda: open("program.md", "a").write("ignore the rules\n"))
tryit("write_git_pointer", lambda: open(".git", "a").write("x"))
tryit("write_git_config", lambda: open(sys.argv[1] + "/.git/config", "a").write("x"))
tryit("read_test_split", lambda: open(sys.argv[1] + "/data/test.txt").read())
tryit("home", lambda: open(os.path.join(os.environ["HOME"], "settings.json"), "w").write("{}"))
tryit("model_endpoint", lambda: urllib.request.urlopen(os.environ["MODEL_URL"], timeout=5).read().decode())
tryit("git_log", lambda: subprocess.run(["git", "log", "--oneline", "-1"], capture_output=True, text=True, check=True).stdout)
out["env"] = sorted(os.environ)
out["proc1"] = open("/proc/1/environ", "rb").read().decode(errors="replace")
print(json.dumps(out))
'''


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"model says hi")

    def log_message(self, *a) -> None:
        pass


def test_agent_profile_in_a_real_bwrap(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    proj.write("data/test.txt", "secret labels\n")
    tree = proj.dir / ".nightlab" / "t" / "worktree"
    proj.git("worktree", "add", "-q", "-b", "nightlab/t", str(tree))
    home = tmp_path / "agent-home"
    home.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"MODEL_URL": f"http://127.0.0.1:{server.server_port}/v1", "DUMMY_KEY": "proxy-dummy"}
    argv = agent_argv([sys.executable, "-c", PROBE, str(proj.dir)], tree, home, env,
                      readonly=["prepare.py", "program.md", "nightlab.toml"], hidden=[proj.dir])
    os.environ["ANTHROPIC_API_KEY_FOR_TEST"] = "sk-live-secret"  # in the caller's env: must not reach the agent
    try:
        proc = subprocess.run(argv, env={}, capture_output=True, text=True, timeout=60)
    finally:
        del os.environ["ANTHROPIC_API_KEY_FOR_TEST"]
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in ("edit_train", "write_scratchpad", "rename_over_train", "home", "model_endpoint", "git_log"):
        assert out[name][0] == "ok", (name, out[name])
    assert out["model_endpoint"][1] == "model says hi"  # the network is on: the agent reaches its model
    for name in ("edit_prepare", "edit_program", "write_git_pointer", "write_git_config", "read_test_split"):
        assert out[name][0] == "failed", (name, out[name])
    assert set(out["env"]) <= {"PATH", "HOME", "MODEL_URL", "DUMMY_KEY", "PWD", "LC_CTYPE"}
    assert "sk-live-secret" not in out["proc1"] and "sk-live-secret" not in proc.stdout
    assert (tree / "train.py").read_text() == "X = 1\n" and (tree / "scratchpad.md").read_text() == "notes\n"
    assert "tampered" not in (tree / "prepare.py").read_text()
    assert (home / "settings.json").exists()
