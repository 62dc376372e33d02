"""Lower layers never import upper ones: the sandbox runs a command and knows nothing of projects or trials."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nightlab"
# What a sandbox module may import from nightlab: the records, errors, config, log parsing, the plug-in loader, and itself.
SANDBOX_MAY = ("nightlab.types", "nightlab.errors", "nightlab.config", "nightlab.metrics", "nightlab.plugins",
               "nightlab.sandbox")


def imports(path: Path) -> set[str]:
    """Every nightlab module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("nightlab")}


def test_the_sandbox_imports_nothing_above_it() -> None:
    wrong = {f"{p.name} → {m}" for p in (SRC / "sandbox").glob("*.py") for m in imports(p)
             if not m.startswith(SANDBOX_MAY)}
    assert not wrong, wrong


def test_probing_does_not_import_a_backend() -> None:
    """The backends use the probe (bwrap checks that it works before its first run), never the other way."""
    backends = {"nightlab.sandbox.bwrap", "nightlab.sandbox.container", "nightlab.sandbox.process"}
    assert not imports(SRC / "sandbox" / "probe.py") & backends
