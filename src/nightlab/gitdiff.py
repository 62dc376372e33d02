"""A trial's patch (runs/<n>/diff.patch, the report's diff, MLflow's artifact) written by nightlab itself: what
`git show --format= <commit> -- .` prints in the project directory, without its process (one a trial and one a
rebase, milliseconds each).

The commit's tree is compared with its parent's under the project directory, paths shown from the repository's top,
in git's format: `diff --git`, the mode lines, `index <old>..<new> [<mode>]` (names abbreviated as git does:
gitabbrev.py), `---`/`+++` (`/dev/null` for an added or deleted file; a tab after a name holding a space), hunks
with 3 lines of context and git's function line after `@@`, `\\ No newline at end of file`, `Binary files ...
differ` where either side has a NUL in its first 8000 bytes, a symlink as its target, a change between a link and
a file as a deletion and an addition. The hunks come from difflib, not git's Myers diff: where a change could be
cut two ways they may be cut elsewhere than git's, but each is a correct hunk, so the patch applies to the parent
(`git apply`) and gives the commit, which is what a record needs; a plain change is printed byte for byte as git's.

What git would print otherwise is left to git (`Fallback`, then `git show` runs as before): settings that change a
patch's text (`diff.*` but those that only move where hunks are cut, `core.abbrev`, colour always, an external
diff), attributes (diff drivers, textconv, `binary`), a rename or copy git would detect, a path git would quote,
submodules, files over BIG (difflib's time grows faster than git's), and the repositories `gitcommit.Repo.fast`
leaves to git.
"""

from __future__ import annotations

import difflib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from nightlab.errors import NightlabError
from nightlab.gitabbrev import Abbrev
from nightlab.gitcmd import QUIET
from nightlab.gitcommit import Repo
from nightlab.gitobjects import BLOB, EMPTY_TREE, EXEC, LINK, TREE, Entry, Fallback, Objects

NULL = "0" * 40
CONTEXT = 3  # diff.context's default
PEEK = 8000  # git looks this far for a NUL to call a file binary
BIG = 1 << 18
FUNC = 80  # the longest function line git shows after a hunk's `@@`
# diff.* settings that only change where hunks are cut, colours, or other commands: the patch is still a right one
HARMLESS = {"diff.algorithm", "diff.indentheuristic", "diff.colormoved", "diff.colormovedws", "diff.wserrorhighlight",
            "diff.tool", "diff.guitool", "diff.renamelimit", "diff.renames", "diff.statgraphwidth",
            "diff.statnamewidth", "diff.dirstat", "diff.autorefreshindex"}
OFF = ("false", "no", "off", "0")
QUOTED = {*range(0x20), 0x22, 0x5C, 0x7F}  # bytes git quotes in a path (core.quotePath=false)

Change = tuple[bytes, Entry | None, Entry | None]  # path from the top; old and new entry (None: not there)


def patch(repo: Repo, commit: str, sub: str, cwd: Path) -> str:
    """`git show --format= <commit> -- .` run in `cwd` (the project directory, `sub` from the repository's top)."""
    try:
        return render(repo, commit, sub)
    except Fallback:
        return by_git(commit, cwd, repo.env)


def by_git(commit: str, cwd: Path, env: dict[str, str]) -> str:
    """git's own (bytes kept as they are: a text-mode read would turn CRLF lines into LF ones)."""
    proc = subprocess.run(["git", "-c", "core.quotePath=false", "show", "--format=", commit, "--", "."], cwd=cwd,
                          capture_output=True, env={**os.environ, **env, "GIT_TERMINAL_PROMPT": "0", **QUIET})
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {proc.returncode}"]
        raise NightlabError(f"git show failed in {cwd}: {said[-1]}")
    return proc.stdout.decode(errors="replace")


def render(repo: Repo, commit: str, sub: str) -> str:
    """The patch written here; raises Fallback where git must write it."""
    if why := why_git(repo):
        raise Fallback(why)
    objects = repo.objects
    if len(commit) != 40 or len(parents := objects.parents(commit)) != 1:
        raise Fallback("not a commit on one parent, named in full")
    old, new = (_under(objects, objects.commit_tree(c), sub) for c in (parents[0], commit))
    top = b"" if sub in ("", ".") else os.fsencode(sub) + b"/"
    changes = list(_walk(objects, old, new, top))
    _check(repo, changes)
    abbrev = Abbrev(objects.dir)
    return b"".join(_section(objects, abbrev, *change) for change in changes).decode(errors="replace")


def why_git(repo: Repo) -> str:
    """Why git must write this repository's patches ('' when it need not)."""
    if not repo.fast:
        return repo.why_slow
    if env := [k for k in ("GIT_EXTERNAL_DIFF", "GIT_DIFF_OPTS") if os.environ.get(k)]:
        return f"{env[0]} is set"
    config = repo.config
    if odd := [k for k in config if k.startswith("diff.") and k not in HARMLESS]:
        return f"{odd[0]} is set"
    if config.get("core.abbrev"):
        return "core.abbrev is set"
    if (config.get("color.diff") or config.get("color.ui") or "").lower() == "always":
        return "colours are always on"
    if config.get("log.showsignature", "false").lower() not in OFF:
        return "log.showSignature is set"
    return ""


def _under(objects: Objects, tree: str, sub: str) -> str:
    """The tree of directory `sub` in `tree` (the empty tree where there is none)."""
    if sub in ("", "."):
        return tree
    entry = objects.lookup(tree, sub)
    return entry.sha if entry is not None and entry.mode == TREE else EMPTY_TREE


def _key(entry: Entry) -> bytes:
    return entry.name + b"/" if entry.mode == TREE else entry.name  # git's tree order


def _walk(objects: Objects, old: str, new: str, top: bytes) -> Iterator[Change]:
    """The files that differ between two trees, in git's order."""
    if old == new:
        return
    before = {_key(e): e for e in objects.tree(old)}
    after = {_key(e): e for e in objects.tree(new)}
    if b".gitattributes" in before or b".gitattributes" in after:
        raise Fallback("attributes may change the patch")
    for key in sorted(before.keys() | after.keys()):
        x, y = before.get(key), after.get(key)
        if x == y:
            continue
        if any(e is not None and e.mode not in (BLOB, EXEC, LINK, TREE) for e in (x, y)):
            raise Fallback(f"{top + key!r} is a submodule or has an odd mode")
        path = top + key
        if key.endswith(b"/"):
            yield from _walk(objects, x.sha if x else EMPTY_TREE, y.sha if y else EMPTY_TREE, path)
        elif x is not None and y is not None and (x.mode == LINK) != (y.mode == LINK):
            yield path, x, None  # git shows a link turned file (or back) as the one deleted, the other added
            yield path, None, y
        else:
            yield path, x, y


def _check(repo: Repo, changes: list[Change]) -> None:
    """Fallback where git's patch could hold what this module does not write."""
    added = {p for p, x, _ in changes if x is None}
    deleted = {p for p, _, y in changes if y is None}
    added, deleted = added - deleted, deleted - added  # a link turned file is neither
    renames = repo.config.get("diff.renames", "true").lower()
    if added and (renames.startswith("cop") or (deleted and renames not in OFF)):
        raise Fallback("git may find a rename or a copy")
    for path, _, _ in changes:
        if QUOTED.intersection(path):
            raise Fallback(f"git quotes {path!r}")
        parts = path.split(b"/")[:-1]
        for i in range(len(parts) + 1):
            if (repo.tree / os.fsdecode(b"/".join(parts[:i])) / ".gitattributes").exists():
                raise Fallback("attributes may change the patch")


def _section(objects: Objects, abbrev: Abbrev, path: bytes, old: Entry | None, new: Entry | None) -> bytes:
    """One file's part of the patch."""
    a, b = b"a/" + path, b"b/" + path
    out = [b"diff --git " + a + b" " + b + b"\n"]
    if old is None and new is not None:
        out.append(b"new file mode " + new.mode + b"\n")
    elif new is None and old is not None:
        out.append(b"deleted file mode " + old.mode + b"\n")
    elif old is not None and new is not None and old.mode != new.mode:
        out.append(b"old mode " + old.mode + b"\nnew mode " + new.mode + b"\n")
    one, two = old.sha if old else NULL, new.sha if new else NULL
    if one == two:  # only the mode changed
        return b"".join(out)
    same = b" " + old.mode if old is not None and new is not None and old.mode == new.mode else b""
    out.append(b"index " + abbrev(one).encode() + b".." + abbrev(two).encode() + same + b"\n")
    left, right = a if old else b"/dev/null", b if new else b"/dev/null"
    before, after = _blob(objects, old), _blob(objects, new)
    if b"\0" in before[:PEEK] or b"\0" in after[:PEEK]:
        out.append(b"Binary files " + left + b" and " + right + b" differ\n")
    elif hunks := _hunks(before, after):
        out += [b"--- " + left + _tab(left) + b"\n", b"+++ " + right + _tab(right) + b"\n", *hunks]
    return b"".join(out)


def _tab(name: bytes) -> bytes:
    return b"\t" if b" " in name else b""  # as git, so that a patch tool finds where a name with a space ends


def _blob(objects: Objects, entry: Entry | None) -> bytes:
    if entry is None:
        return b""
    kind, data = objects.read(entry.sha)
    if kind != b"blob":
        raise NightlabError(f"object {entry.sha} is a {kind.decode()}, not a blob")
    if len(data) > BIG:
        raise Fallback(f"{entry.name!r} is big")
    return data


def _lines(data: bytes) -> list[bytes]:
    """Lines as git splits them: at LF only, each with its LF (the last may have none)."""
    lines = data.split(b"\n")
    last = lines.pop()
    return [line + b"\n" for line in lines] + ([last] if last else [])


def _hunks(before: bytes, after: bytes) -> list[bytes]:
    a, b = _lines(before), _lines(after)
    out: list[bytes] = []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(CONTEXT):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(b"@@ -" + _range(i1, i2 - i1) + b" +" + _range(j1, j2 - j1) + b" @@" + _function(a, i1) + b"\n")
        for tag, x1, x2, y1, y2 in group:
            signed = [(b" ", line) for line in a[x1:x2]] if tag == "equal" else \
                [(b"-", line) for line in a[x1:x2]] + [(b"+", line) for line in b[y1:y2]]
            for sign, line in signed:
                out.append(sign + line if line.endswith(b"\n") else sign + line + b"\n\\ No newline at end of file\n")
    return out


def _range(start: int, count: int) -> bytes:
    """A hunk's side: its first line (1-based; the line before it when it is empty) and its count (omitted when 1)."""
    if count == 1:
        return str(start + 1).encode()
    return f"{start + 1 if count else start},{count}".encode()


def _function(lines: list[bytes], start: int) -> bytes:
    """git's default function line: the nearest line above the hunk that starts with a letter, `_` or `$`."""
    for line in reversed(lines[:start]):
        if line[:1].isalpha() or line[:1] in (b"_", b"$"):
            return b" " + line[:FUNC].rstrip(b" \t\r\n")
    return b""
