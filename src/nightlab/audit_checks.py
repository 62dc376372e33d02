"""The static checks of one editable Python file: every place its code could move the metric without training a
better model. Each check names candidate sites in a file; audit.py reports the sites a change adds (a site the
parent already had is the user's own code, not the trial's doing).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

# Functions whose calls inside the timed loop do not make it a training step.
COMMON_CALLS = {"print", "range", "len", "float", "int", "str", "min", "max", "abs", "sum", "enumerate", "zip",
                "isfinite", "perf_counter", "time", "monotonic", "exit", "flush", "item", "format", "list",
                "tuple", "append", "get", "round", "sqrt", "log", "isnan", "isinf", "any", "all", "sorted"}
BUILTIN_OPAQUE = {"exec", "eval", "compile", "__import__", "setattr"}  # called by name
OS_OPAQUE = {"system", "popen", "_exit", "fork", "kill", "execv", "execve", "execl", "execlp", "spawnl"}
OPAQUE_MODULES = {"ctypes", "subprocess", "importlib", "marshal", "atexit", "signal", "builtins", "base64", "inspect"}
CLOCK_MODULES = {"time", "datetime"}
WRITERS = {"write_text", "write_bytes", "save", "savez", "savez_compressed", "savetxt", "dump", "makedirs", "mkdir",
           "symlink", "symlink_to", "to_csv"}
OS_WRITERS = {"copy", "copyfile", "copy2", "copytree", "move", "rename", "replace", "link"}  # of os and shutil
STATE_PATH = re.compile(r"^/(?!dev/null)\w|(^|/)\.\.(/|$)|^~|\.nightlab|(^|/)runs/|repeat-\d")
SEARCHES = {"expanduser", "home", "glob", "iglob", "rglob", "listdir", "scandir"}
SEEDISH = re.compile(r"seed|SEED|determinis|cudnn|random_state|default_rng|PYTHONHASHSEED|RandomState|Generator")


@dataclass(frozen=True)
class Site:
    check: str
    key: str  # what identifies the site whatever line it is on (its code, unparsed)
    reason: str
    line: int


def fold(node: ast.AST) -> str | None:
    """The text of a string expression built only from literals (`"val" + "_loss: 0.1"`), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = fold(node.left), fold(node.right)
        return left + right if left is not None and right is not None else None
    if isinstance(node, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in node.values):
        return "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
    return None


def name_of(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def base_name(node: ast.AST) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def mentions(node: ast.AST, names: set[str], texts: tuple[str, ...] = ()) -> bool:
    """Whether `node` reads one of `names`, or holds a string containing one of `texts`."""
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id in names:
            return True
        if texts and isinstance(n, ast.Constant) and isinstance(n.value, str) and any(t in n.value for t in texts):
            return True
    return False


class Source:
    """One parsed file with what the checks need to know about its names."""

    def __init__(self, text: str, metric: str, splits: dict[str, list[str]]) -> None:
        self.tree = ast.parse(text)
        self.metric, self.splits = metric, splits
        self.nodes = list(ast.walk(self.tree))  # walked once: every check goes over them
        self.parents: dict[ast.AST, ast.AST] = {c: p for p in self.nodes for c in ast.iter_child_nodes(p)}
        self.modules = {a.asname or a.name.split(".")[0]: a.name for n in self.nodes
                        if isinstance(n, ast.Import) for a in n.names}
        self.assigns: dict[str, list[ast.AST]] = {}
        for n in self.nodes:
            if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and n.value is not None:
                for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                    for name in ast.walk(t):
                        if isinstance(name, ast.Name):
                            self.assigns.setdefault(name.id, []).append(n.value)
        self.budget = self.derived("NIGHTLAB_BUDGET_S", depth=2)  # budget_s, then deadline
        self.seed = self.derived("NIGHTLAB_SEED", depth=1)
        self.run_dir = self.derived("NIGHTLAB_RUN_DIR")
        suffix = metric.split("_", 1)[1] if metric.startswith("val_") and "_" in metric else ""
        self.tokens = [metric] + ([f"_{suffix}"] if suffix else [])

    def derived(self, env: str, depth: int = 8) -> set[str]:
        """Names whose value comes from the environment variable `env`, directly or through other names (at most
        `depth` assignments away: a name computed from the seed or the budget at ten removes is not either)."""
        reads = {n: [self.reads(v) for v in values] for n, values in self.assigns.items()}
        names: set[str] = set()
        for _ in range(depth):
            more = {n for n, rs in reads.items() if n not in names
                    and any(r[0] & names or any(env in t for t in r[1]) for r in rs)}
            if not more:
                break
            names |= more
        return names

    def reads(self, node: ast.AST) -> tuple[set[str], list[str]]:
        """The names an expression reads and the strings it holds."""
        walked = list(ast.walk(node))
        return ({n.id for n in walked if isinstance(n, ast.Name)},
                [n.value for n in walked if isinstance(n, ast.Constant) and isinstance(n.value, str)])

    def stmt(self, node: ast.AST) -> ast.AST:
        """The statement holding `node`."""
        while not isinstance(node, ast.stmt) and node in self.parents:
            node = self.parents[node]
        return node

    def in_loop(self, node: ast.AST) -> bool:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.For, ast.While, ast.comprehension)):
                return True
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return False
        return False

    def constant(self, node: ast.AST, depth: int = 0) -> bool:
        """Whether an expression is computed from literals only (names followed to their assignments)."""
        if depth > 8:
            return False
        for n in ast.walk(node):
            if isinstance(n, (ast.Call, ast.Attribute, ast.Subscript)):
                return False
            if isinstance(n, ast.Name):
                values = self.assigns.get(n.id)
                if not values or not all(self.constant(v, depth + 1) for v in values):
                    return False
        return True


def metric_sites(src: Source) -> Iterator[Site]:
    """Where the metric is printed or written (a `name:` summary line, or a dict entry named like it)."""
    emit = re.compile("|".join(re.escape(t) + ":" for t in src.tokens))
    literal = re.compile("(" + "|".join(re.escape(t) for t in src.tokens) + r"):\s*[-+.\d]")
    for node in src.nodes:
        value: ast.AST | None = None
        text = fold(node)
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            at = next((i for i, p in enumerate(parts) if isinstance(p, ast.Constant) and emit.search(str(p.value))),
                      None)
            if at is None:
                head = parts[0] if parts else None  # f"{split + '_loss:':<18}{value}": the name is computed
                if isinstance(head, ast.FormattedValue) and any(emit.search(fold(s) or "") for s in ast.walk(head)):
                    at = 0
            if at is not None:
                value = next((p.value for p in parts[at + 1:] if isinstance(p, ast.FormattedValue)), None)
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if k is not None and (fold(k) or "") in (src.metric, *src.tokens[1:]):
                    value = v
        elif text is not None and literal.search(text) and not isinstance(src.parents.get(node), ast.JoinedStr):
            value = node  # the number is in the text itself
        elif text is not None and emit.search(text) and isinstance(src.parents.get(node), ast.Call):
            call = src.parents[node]
            args = list(call.args) if isinstance(call, ast.Call) else []
            value = args[args.index(node) + 1] if node in args and args.index(node) + 1 < len(args) else None
        if value is None or isinstance(src.parents.get(node), (ast.JoinedStr, ast.FormattedValue, ast.BinOp)):
            continue
        line = getattr(node, "lineno", 0)
        yield Site("metric-site", ast.unparse(src.stmt(node)), "prints or writes the metric", line)
        if src.constant(value):
            yield Site("metric-constant", ast.unparse(value),
                       f"the metric is printed or written from a constant (`{ast.unparse(value)[:60]}`), "
                       "not computed over the validation data", line)
        else:
            yield Site("metric-value", ast.unparse(value), f"the metric's value is now `{ast.unparse(value)[:80]}`",
                       line)
        if src.in_loop(node):
            yield Site("metric-repeated", ast.unparse(src.stmt(node)), "the metric line is printed inside a loop", line)


def evaluation_sites(src: Source) -> Iterator[Site]:
    """Evaluation code in the editable file, how it is called, what is done to its results, patched modules."""
    results = {n for n, values in src.assigns.items()
               if any(isinstance(v, ast.Call) and "eval" in name_of(v).lower() for v in values)}
    for node in src.nodes:
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            name = getattr(node, "name", "") or next(
                (t.id for t in getattr(src.parents.get(node), "targets", []) if isinstance(t, ast.Name)), "")
            if re.search(r"eval|metric|score", name, re.IGNORECASE):
                yield Site("eval-function", ast.unparse(node), f"defines or changes the evaluation function `{name}`",
                           line)
        elif isinstance(node, ast.Call) and re.search(r"eval|metric", name_of(node), re.IGNORECASE) \
                and (node.args or node.keywords):  # model.eval() switches a mode, it does not evaluate
            yield Site("eval-call", ast.unparse(node), f"evaluates differently: `{ast.unparse(node)[:80]}`", line)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if isinstance(t, (ast.Subscript, ast.Attribute)) and base_name(t) in results:
                    yield Site("eval-result", ast.unparse(node),
                               f"changes the evaluation's result after it was computed (`{ast.unparse(t)[:60]}`)", line)
                elif isinstance(t, ast.Attribute) and base_name(t) in src.modules:
                    clock = src.modules[base_name(t)].split(".")[0] in CLOCK_MODULES
                    yield Site("clock-patch" if clock else "module-patch", ast.unparse(node),
                               f"patches {'the clock' if clock else 'a module'}: `{ast.unparse(t)}` is replaced", line)
                elif isinstance(t, ast.Name) and "eval" in t.id.lower():
                    yield Site("eval-function", ast.unparse(node), f"replaces the evaluation function `{t.id}`", line)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and base_name(node.func) in results \
                and node.func.attr in ("update", "pop", "setdefault", "__setitem__", "clear"):
            yield Site("eval-result", ast.unparse(node), "changes the evaluation's result after it was computed", line)


def data_sites(src: Source) -> Iterator[Site]:
    """Reads of the validation and hidden splits, and branches on which split a run evaluates."""
    names = {split: [split, *paths, *(p.rsplit("/", 1)[-1] for p in paths)] for split, paths in src.splits.items()}
    for node in src.nodes:
        text = fold(node)
        line = getattr(node, "lineno", 0)
        if text in ("NIGHTLAB_SPLIT", "NIGHTLAB_FINAL"):
            yield Site("split-branch", ast.unparse(src.parents.get(node, node)),
                       f"reads {text}: the code can tell a validation run from a test run", line)
        elif isinstance(node, ast.Compare) and any(fold(c) in names for c in [node.left, *node.comparators]):
            yield Site("split-branch", ast.unparse(node), f"branches on the split: `{ast.unparse(node)[:60]}`", line)
        elif text is not None and isinstance(src.parents.get(node), (ast.Call, ast.keyword)):
            split = next((s for s, texts in names.items()
                          if text in texts or any(p and p in text for p in texts[1:])), None)
            if split is not None:
                yield Site("split-read", ast.unparse(src.stmt(node)),
                           f"reads the {split} split in training code (`{ast.unparse(src.stmt(node))[:70]}`)", line)


def time_sites(src: Source) -> Iterator[Site]:
    """The budget read or changed, and training steps after the timed loop."""
    for node in src.nodes:
        line = getattr(node, "lineno", 0)
        if fold(node) == "NIGHTLAB_BUDGET_S":
            yield Site("budget", ast.unparse(src.stmt(node)), "reads or sets NIGHTLAB_BUDGET_S", line)
        elif isinstance(node, (ast.Assign, ast.AugAssign)) and node in src.tree.body and any(
                isinstance(t, ast.Name) and t.id in src.budget
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
            yield Site("budget", ast.unparse(node), f"sets the time budget: `{ast.unparse(node)[:70]}`", line)
    body = src.tree.body
    timed = [i for i, s in enumerate(body) if isinstance(s, (ast.For, ast.While)) and mentions(s, src.budget)]
    if not timed:
        return
    steps = {name_of(c) for i in timed for c in ast.walk(body[i]) if isinstance(c, ast.Call)} - COMMON_CALLS - {""}
    for stmt in body[timed[-1] + 1:]:
        for c in ast.walk(stmt):
            if isinstance(c, ast.Call) and name_of(c) in steps:
                yield Site("after-budget", ast.unparse(stmt),
                           f"calls `{name_of(c)}` (a step of the timed loop) after the timed loop ends", c.lineno)
                break


def state_sites(src: Source) -> Iterator[Site]:
    """Files written outside the run directory, paths that reach past it, opaque or process-level code."""
    opaque_mods = {m for m, full in src.modules.items() if full.split(".")[0] in OPAQUE_MODULES}
    for node in src.nodes:
        line = getattr(node, "lineno", 0)
        text = fold(node)
        if text is not None and STATE_PATH.search(text) and isinstance(src.parents.get(node), (ast.Call, ast.keyword,
                                                                                              ast.BinOp)):
            yield Site("state-path", ast.unparse(src.stmt(node)),
                       f"uses a path outside the run directory ({text[:50]!r})", line)
        if not isinstance(node, ast.Call):
            continue
        name, func, base = name_of(node), node.func, base_name(node.func)
        if name == "open":
            mode = fold(node.args[1]) if len(node.args) > 1 else next(
                (fold(k.value) for k in node.keywords if k.arg == "mode"), None)
            writes = mode is not None and any(c in mode for c in "wax+")
        else:
            writes = name in WRITERS or name in OS_WRITERS and base in ("os", "shutil")
        if writes and not mentions(node, src.run_dir, ("NIGHTLAB_RUN_DIR",)) or name in SEARCHES:
            where = ast.unparse(node.args[0] if node.args else func)[:50]
            yield Site("state-write" if writes else "state-path", ast.unparse(node),
                       f"{'writes' if writes else 'looks for'} files outside the run directory (`{where}`)", line)
        if (isinstance(func, ast.Name) and name in BUILTIN_OPAQUE) or (base == "os" and name in OS_OPAQUE) \
                or base in opaque_mods:
            yield Site("opaque", ast.unparse(node), f"runs code the audit cannot read (`{ast.unparse(node)[:60]}`)",
                       line)
    for node in src.nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in OPAQUE_MODULES for m in mods):
                yield Site("opaque", ast.unparse(node), f"imports {', '.join(mods)}", node.lineno)


def seed_sites(src: Source) -> Iterator[Site]:
    """The seed read from the environment, and any assignment that overrides it."""
    for node in src.nodes:
        if fold(node) == "NIGHTLAB_SEED":
            yield Site("seed-read", ast.unparse(src.stmt(node)), "reads NIGHTLAB_SEED", getattr(node, "lineno", 0))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in src.seed for t in node.targets) \
                and not mentions(node.value, src.seed, ("NIGHTLAB_SEED",)):
            yield Site("seed-fixed", ast.unparse(node),
                       f"overrides the seed: `{ast.unparse(node)[:60]}` (fresh-seed confirmations see one seed)",
                       node.lineno)


CHECKS = (metric_sites, evaluation_sites, data_sites, time_sites, state_sites, seed_sites)


def sites(text: str, metric: str, splits: dict[str, list[str]]) -> list[Site]:
    return list(_sites(text, metric, tuple((k, tuple(v)) for k, v in splits.items())))


@lru_cache(maxsize=16)
def _sites(text: str, metric: str, splits: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[Site, ...]:
    """A file's sites, remembered for the next trials: most start from the same best, whose file is read again
    for each (a SyntaxError is not remembered: it is raised again)."""
    src = Source(text, metric, {k: list(v) for k, v in splits})
    return tuple(s for check in CHECKS for s in check(src))
