"""What a machine that runs trials offers them (a Slurm compute node, an SSH host), as `nightlab doctor` reports it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from nightlab.errors import UsageError


def node_report() -> dict:
    """This machine: its name, interpreter, the sandbox `auto` picks, the GPUs nvidia-smi lists, its network."""
    from nightlab.sandbox.probe import choose_auto

    try:
        sandbox, sandbox_ok = f"auto picks {choose_auto()}", True
    except UsageError as e:
        sandbox, sandbox_ok = str(e), False
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        gpus = smi.stdout.strip().splitlines() if smi.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        gpus = []
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        network = "reaches the internet (pypi.org)"
    except OSError as e:
        network = f"no internet ({e.strerror or e}): fine, runs need none; the agent runs where nightlab does"
    return {"host": socket.gethostname(), "python": sys.executable, "sandbox": sandbox, "sandbox_ok": sandbox_ok,
            "gpus": gpus, "network": network}


def report_checks(found: dict, prefix: str = "node") -> list[tuple[str, bool, str]]:
    """(name, ok, text) rows for `nightlab doctor` from a node_report()."""
    gpus = "; ".join(found["gpus"]) or f"nvidia-smi lists none on the {prefix}"
    return [(f"{prefix}-sandbox", found["sandbox_ok"], found["sandbox"]), (f"{prefix}-gpus", bool(found["gpus"]), gpus),
            (f"{prefix}-network", True, found["network"])]


if __name__ == "__main__":
    print(json.dumps(node_report()))
