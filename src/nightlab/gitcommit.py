"""A worktree's commits made by nightlab itself (gitobjects.py, gitrefs.py): the objects and ref moves that `git add`
+ `git commit`, `git commit-tree`, `git update-ref` and `git show <commit>:<path>` made, byte for byte the same
commits (same identity and date rules, same message clean-up), without their processes.

`Repo.fast` is False where a commit could need more than this: the caller then runs git as before.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nightlab import crashpoint
from nightlab.errors import NightlabError
from nightlab.gitcmd import NO_HOOKS, git
from nightlab.gitobjects import BLOB, EXEC, LINK, REDIRECTS, Entry, Fallback, Objects
from nightlab.gitrefs import Refs

# Identity used only when neither the repository nor the user names anyone, so commits never fail.
IDENTITY = {"GIT_AUTHOR_NAME": "nightlab", "GIT_AUTHOR_EMAIL": "nightlab@localhost"}
IDENTITY |= {"GIT_COMMITTER_NAME": "nightlab", "GIT_COMMITTER_EMAIL": "nightlab@localhost"}
# Settings under which `git add` would store something other than the file's bytes, or a commit look different.
SLOW_CONFIG = {"core.autocrlf": ("", "false"), "core.attributesfile": ("",), "core.filemode": ("", "true"),
               "core.symlinks": ("", "true"), "core.sharedrepository": ("", "false", "umask", "0"),
               "i18n.commitencoding": ("", "utf-8", "utf8"), "core.precomposeunicode": ("", "false"),
               "commit.cleanup": ("", "default", "whitespace")}


def settings(repo: Path) -> dict[str, str]:
    """`git var -l`: the repository's configuration (keys as git prints them) and the identities git would use."""
    proc = subprocess.run(["git", "var", "-l"], cwd=repo, capture_output=True, text=True, errors="surrogateescape")
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        found[key] = value if sep else "true"  # a key with no value is a boolean's true
    return found


def identity_overrides(config: dict[str, str], environ: os._Environ | dict[str, str]) -> dict[str, str]:
    """nightlab's own identity for the parts git has no configured value for."""
    env = {}
    for who in ("AUTHOR", "COMMITTER"):
        for what, key in (("NAME", "user.name"), ("EMAIL", "user.email")):
            if not config.get(key) and not environ.get(f"GIT_{who}_{what}"):
                env[f"GIT_{who}_{what}"] = IDENTITY[f"GIT_{who}_{what}"]
    return env


def ident_date(now: float) -> str:
    offset = time.localtime(now).tm_gmtoff // 60
    sign = "-" if offset < 0 else "+"
    return f"{int(now)} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


@dataclass
class Ident:
    name: str
    email: str
    date: str  # "<seconds> <zone>" when GIT_*_DATE fixes it, else "" (the time of each commit)

    def line(self, now: str) -> bytes:
        return f"{self.name} <{self.email}> {self.date or now}".encode(errors="surrogateescape")


def _ident(who: str, config: dict[str, str], env: dict[str, str]) -> Ident:
    """The author or committer as git would have it: nightlab's overrides, else what `git var` said (git's own
    rules: environment, author.* or committer.*, user.*)."""
    said = config.get(f"GIT_{who}_IDENT", "")
    name_email, _, date = said.rpartition(">")
    name, _, email = name_email.partition(" <")
    name, email = env.get(f"GIT_{who}_NAME", name), env.get(f"GIT_{who}_EMAIL", email)
    if not name or not email:
        raise NightlabError(f"git has no {who.lower()} identity (set user.name and user.email)")
    return Ident(name, email, date.strip() if os.environ.get(f"GIT_{who}_DATE") else "")


def cleaned(message: str) -> str:
    """`git commit -m`'s clean-up: lines without trailing blanks, runs of empty lines as one, none at the ends."""
    out: list[str] = []
    empties = 0
    for line in message.split("\n"):
        line = line.rstrip(" \t\r")  # git's isspace()
        if not line:
            empties += 1
            continue
        if empties and out:
            out.append("")
        empties = 0
        out.append(line)
    return "\n".join(out) + "\n" if out else ""


def _why_slow(config: dict[str, str]) -> str:
    """Why commits here are left to git ('' when they need not be)."""
    if env := [k for k in REDIRECTS if os.environ.get(k)]:
        return f"{env[0]} is set"
    for key, fine in SLOW_CONFIG.items():
        if config.get(key, "").lower() not in fine:
            return f"{key} is set"
    if ext := [k for k in config if k.startswith("extensions.")]:  # another hash, ref store, per-worktree config
        return f"{ext[0]} is set"
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    if (xdg / "git" / "attributes").exists():
        return "a global attributes file exists"
    return ""


def gitdirs(tree: Path) -> tuple[Path, Path]:
    """A worktree's own git directory and the repository's common one."""
    dot = tree / ".git"
    if dot.is_dir():
        return dot, dot
    try:
        gitdir = Path(dot.read_text().removeprefix("gitdir:").strip())
        gitdir = gitdir if gitdir.is_absolute() else (tree / gitdir).resolve()
        common = gitdir / (gitdir / "commondir").read_text().strip()
    except OSError as e:
        raise NightlabError(f"{tree} is not a usable git worktree ({e.strerror}: {e.filename})") from None
    return gitdir, common.resolve()


class Repo:
    """One worktree's commits, refs and committed files, written and read in this process (`fast`), else by git."""

    def __init__(self, tree: Path, repo: Path) -> None:
        self.tree = tree  # the worktree's top: git commands run there, paths are the repository's
        self.config = config = settings(repo)
        self.env = identity_overrides(config, os.environ)  # for the git processes that remain
        gitdir, common = gitdirs(tree)
        self.objects = Objects(common)
        self.refs = Refs(gitdir, common, config.get("core.logallrefupdates", "true"))
        self.why_slow = _why_slow(config) or ("info/attributes exists" if (common / "info/attributes").exists()
                                              else "")
        try:
            self.author, self.committer = _ident("AUTHOR", config, self.env), _ident("COMMITTER", config, self.env)
        except NightlabError as e:
            self.why_slow = self.why_slow or str(e)  # git says it better
        self.gc_auto = int(config["gc.auto"]) if config.get("gc.auto", "").isdigit() else 6700

    @property
    def fast(self) -> bool:
        return not self.why_slow

    def _git(self, *args: str) -> str:
        return git(*args, cwd=self.tree, env=self.env)

    def head(self) -> str:
        sha = self.refs.resolve("HEAD") if self.fast else None
        return sha if sha and len(sha) == 40 else self._git("rev-parse", "HEAD")

    def commit(self, paths: list[str], message: str, move: bool = True) -> str:
        """`git add <paths>` and `git commit -m <message>` on HEAD (its branch moves); `paths` are the
        repository's, their content the worktree's (a missing file is removed). The new commit's name. `move=False`:
        HEAD stays where it is when this module writes the commit (git's own commit, where it must, moves it)."""
        if self.fast:
            try:
                return self._commit(paths, message, move)
            except Fallback:
                pass
        self._git("add", "--", *paths)
        self._git("-c", "commit.gpgsign=false", "-c", NO_HOOKS, "commit", "--quiet", "--no-verify", "-m", message)
        return self._git("rev-parse", "HEAD")

    def _commit(self, paths: list[str], message: str, move: bool) -> str:
        """commit(), written here; raises Fallback where git must do it."""
        files = {path: self.tree / path for path in paths}
        if any((self.tree / d / ".gitattributes").exists() for path in files for d in _dirs(path)):
            raise Fallback("attributes may change what git stores")
        parent = self.refs.resolve("HEAD")
        if parent is None or len(parent) != 40:
            raise Fallback("HEAD names no commit")
        base = self.objects.commit_tree(parent)
        tree = self.objects.with_files(base, {path.encode(): self._entry(path, f) for path, f in files.items()})
        text = cleaned(message)
        if tree == base or not text:
            raise NightlabError(f"git commit failed in {self.tree}: "
                                + ("nothing to commit" if text else "empty commit message"))
        now = ident_date(time.time())
        sha = self._write(tree, [parent], text, now)
        crashpoint.reached("git.commit.written")
        if move:
            self.refs.update("HEAD", sha, parent, self.committer.line(now), "commit: " + text.split("\n", 1)[0],
                             "git.commit.locked")
        for leftover in ("MERGE_MSG", "AUTO_MERGE", "MERGE_MODE", "SQUASH_MSG"):  # a cherry-pick's, as git commit
            (self.refs.gitdir / leftover).unlink(missing_ok=True)
        self._housekeeping()
        return sha

    def _entry(self, path: str, file: Path) -> Entry | None:
        name = path.rsplit("/", 1)[-1].encode()
        try:
            st = file.lstat()
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return Entry(LINK, name, self.objects.write(b"blob", os.fsencode(os.readlink(file))))
        if not stat.S_ISREG(st.st_mode):
            raise Fallback(f"{path} is not a file")
        return Entry(EXEC if st.st_mode & stat.S_IXUSR else BLOB, name, self.objects.write(b"blob", file.read_bytes()))

    def _write(self, tree: str, parents: list[str], message: str, now: str) -> str:
        if "\0" in message:
            raise ValueError("embedded null byte")  # as git's command line would refuse it
        head = f"tree {tree}\n" + "".join(f"parent {p}\n" for p in parents)
        body = (head.encode() + b"author " + self.author.line(now) + b"\ncommitter " + self.committer.line(now)
                + b"\n\n" + message.encode(errors="surrogateescape"))
        return self.objects.write(b"commit", body)

    def amend(self, commit: str, message: str) -> str:
        """`git commit-tree <commit>^{tree} -p <commit>^ -m <message>`: the same change, another message (a
        trial's commit has one parent: the commit it was made on)."""
        if not self.fast:
            return self._git("-c", "commit.gpgsign=false", "commit-tree", f"{commit}^{{tree}}", "-p", f"{commit}^",
                             "-m", message)
        parents = self.objects.parents(commit)[:1]
        text = message if message.endswith("\n") else message + "\n"
        sha = self._write(self.objects.commit_tree(commit), parents, text, ident_date(time.time()))
        crashpoint.reached("git.amend.written")
        return sha

    def set_ref(self, name: str, sha: str) -> None:
        """`git update-ref <name> <sha>`."""
        if not self.fast:
            self._git("update-ref", name, sha)
            return
        self.refs.update(name, sha, None, self.committer.line(ident_date(time.time())), "", "git.mark.locked")

    def blob(self, commit: str, path: str) -> bytes | None:
        """The file at `path` in `commit` (None: there is none)."""
        if not self.fast or len(commit) != 40:
            proc = subprocess.run(["git", "cat-file", "blob", f"{commit}:{path}"], cwd=self.tree, capture_output=True)
            return proc.stdout if proc.returncode == 0 else None
        entry = self.objects.lookup(self.objects.commit_tree(commit), path)
        if entry is None or entry.mode not in (BLOB, EXEC, LINK):
            return None
        return self.objects.read(entry.sha)[1]

    def _housekeeping(self) -> None:
        """`git commit`'s `git maintenance run --auto`, started only when git would find work (its own estimate:
        the loose objects in objects/17)."""
        if self.gc_auto <= 0:
            return
        try:
            loose = sum(len(name) == 38 for name in os.listdir(self.objects.dir / "17"))
        except FileNotFoundError:
            return
        if loose > (self.gc_auto + 255) // 256:
            subprocess.run(["git", "maintenance", "run", "--auto", "--quiet"], cwd=self.tree, capture_output=True,
                           env={**os.environ, **self.env})


def _dirs(path: str) -> list[str]:
    """The directories from the top down to `path`'s own ('' the top)."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts) + 1)]
