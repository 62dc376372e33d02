"""The `nightlab` command's entry point. The read-only commands a user runs often (`--version`, `status`, `log`,
with `--json`, `--tag`, `--config`) are answered here without importing the full CLI (typer, rich, pydantic: most
of their time on a long night's ledger, benchmarks/startup.py); anything else, `--help` and bad flags
included, goes to the full CLI (cli.py), which answers it as it always did."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nightlab import __version__

QUICK = ("status", "log")
VALUED = ("--tag", "--config")


def parse(args: list[str]) -> tuple[str, Path | None, str | None, bool] | None:
    """(command, --config, --tag, --json) for the argument lists answered here; None for any other."""
    if not args or args[0] not in QUICK:
        return None
    seen: dict[str, str] = {}
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name in seen:
            return None  # given twice: the full CLI knows which one counts
        if arg == "--json":
            seen[arg] = ""
        elif name in VALUED and eq:
            seen[name] = value
        elif arg in VALUED and rest and not rest[0].startswith("-"):
            seen[arg] = rest.pop(0)
        else:
            return None
        if name in VALUED and not seen[name]:
            return None
    config = seen.get("--config")
    return args[0], Path(config) if config is not None else None, seen.get("--tag"), "--json" in seen


def main() -> None:
    args = sys.argv[1:]
    if args == ["--version"]:
        _write(f"nightlab {__version__}")
        return
    if (parsed := parse(args)) is not None:
        from nightlab import quick_views
        from nightlab.errors import NightlabError, UsageError

        try:
            text = quick_views.answer(*parsed)
        except quick_views.Unanswered:
            pass
        except UsageError as e:  # as cli.main says them: one line, exit 2; other known failures exit 1
            sys.exit(_error(e, 2))
        except NightlabError as e:
            sys.exit(_error(e, 1))
        except KeyboardInterrupt:
            sys.exit(_error("interrupted", 130, prefix=""))
        else:
            _write(text)
            return
    from nightlab.cli import main as full

    full()


def _error(e: object, code: int, prefix: str = "error: ") -> int:
    print(f"{prefix}{e}", file=sys.stderr)
    return code


def _write(text: str) -> None:
    """Print; a reader that stopped early (`nightlab log | head`) is no error."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would fail again
        sys.exit(141)  # as a shell reports a command ended by SIGPIPE


if __name__ == "__main__":
    main()
