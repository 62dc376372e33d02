"""The `claude-code` agent: the real `claude` CLI, headless, once per trial.

Flags as measured with claude-code 2.1.332 (the version the tests pin): `-p` with stream-json output;
only Read/Edit/Glob/Grep offered (`--tools`, so Bash and Write do not exist for it); edits allowed
only to the editable files and the scratchpad (`--allowedTools "Edit(train.py)"`); deny rules for
Bash, Write, edits of protected files and, outside the phases in `[phases] allow_web`, the web tools;
the default permission mode, so anything not allowed is refused rather than asked. Never
`--dangerously-skip-permissions`.

Keys: with ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) set, the CLI talks to a loopback KeyProxy and
holds only a per-trial token, inside the bwrap agent profile where it works (clirun.sandboxed). Without
a key, it uses your own Claude login: CLAUDE_CONFIG_DIR then points at your config directory (where the
login lives), everything else stays private, and it runs outside bwrap (which hides home directories).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nightlab.agents import Agent, clirun
from nightlab.agents.keyproxy import KeyProxy
from nightlab.agents.prices import Usage, cost, price_for
from nightlab.config import Config
from nightlab.errors import AgentFailed
from nightlab.types import Brief, Proposal, Status

QUIET = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
         "DISABLE_ERROR_REPORTING": "1"}


class ClaudeCodeAgent(Agent):
    reply = clirun.REPLY

    def __init__(self, config: Config, state_dir: Path) -> None:
        self.cfg, self.state_dir = config, Path(state_dir)
        self.cli = clirun.find_cli(config.agent.command, "claude")
        self.session_file = self.state_dir / "claude-code-session.json"

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        home = clirun.private_home(self.state_dir, "claude")
        key = os.environ.get("ANTHROPIC_API_KEY")
        token = os.environ.get("ANTHROPIC_AUTH_TOKEN")
        upstream = self.cfg.agent.base_url or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        if not (key or token):  # the user's own login: the CLI reads it from its config directory
            login = os.environ.get("CLAUDE_CONFIG_DIR") or str(Path.home() / ".claude")
            env = clirun.base_env(home, QUIET | {"CLAUDE_CONFIG_DIR": login})
            if self.cfg.agent.base_url:
                env["ANTHROPIC_BASE_URL"] = self.cfg.agent.base_url
            return self._run(workspace, brief, env, sandbox=False)
        auth = {"x-api-key": key} if key else {"authorization": f"Bearer {token}"}
        with KeyProxy(upstream, auth, self.cfg.agent.timeout_s) as proxy:
            env = clirun.base_env(home, QUIET | {"CLAUDE_CONFIG_DIR": str(home / ".claude"),
                                                 "ANTHROPIC_BASE_URL": proxy.url, "ANTHROPIC_API_KEY": proxy.token})
            return self._run(workspace, brief, env, sandbox=True)

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        """The brief carries the outcomes; a continued session also remembers its own turns."""

    def argv(self, brief: Brief) -> list[str]:
        cfg = self.cfg
        editable = [*brief.editable, cfg.project.scratchpad]
        web = clirun.web_allowed(brief.phase, cfg.phases.allow_web)
        tools = ["Read", "Edit", "Glob", "Grep"] + (["WebFetch", "WebSearch"] if web else [])
        allowed = ["Read", "Glob", "Grep", *(f"Edit({f})" for f in editable)]
        allowed += ["WebFetch", "WebSearch"] if web else []
        deny = ["Bash", "Write", "NotebookEdit", *(f"Edit({f})" for f in cfg.project.protected), "Edit(.git/**)"]
        deny += [] if web else ["WebFetch", "WebSearch"]
        argv = [self.cli, "-p", brief.text, "--output-format", "stream-json", "--verbose",
                "--max-turns", str(cfg.agent.max_turns), "--tools", ",".join(tools),
                "--allowedTools", ",".join(allowed), "--settings", json.dumps({"permissions": {"deny": deny}}),
                "--append-system-prompt", clirun.system_prompt(cfg)]
        if cfg.agent.model:
            argv += ["--model", cfg.agent.model]
        session = self._session()
        if cfg.agent.continue_session and session:
            argv += ["--resume", session]
        elif not cfg.agent.continue_session:
            argv.append("--no-session-persistence")
        return argv

    def _run(self, workspace: Path, brief: Brief, env: dict[str, str], sandbox: bool) -> Proposal:
        argv, note = self.argv(brief), "sandbox: none (your own login lives outside it)"
        if sandbox:
            argv, env, note = clirun.sandboxed(argv, workspace, Path(env["HOME"]), env, self.cfg,
                                               clirun.install_dirs(self.cli))
        proc = clirun.run_cli(argv, workspace, env, self.cfg.agent.timeout_s, Path(self.cli).name)
        events = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        result = next((e for e in reversed(events) if e.get("type") == "result"), None)
        transcript = f"{note}\n\n" + transcribe(events)
        transcript += f"\nstderr: {clirun.tail(proc.stderr)}\n" if proc.stderr.strip() else ""
        if result is None:
            raise AgentFailed(f"claude exited {proc.returncode} without a result: {clirun.tail(proc.stderr)}")
        usage = _usage(result.get("usage") or {})
        dollars = float(result.get("total_cost_usd") or 0.0)
        model = self.cfg.agent.model
        if model and price_for(model, self.cfg.agent.prices) is not None and self.cfg.agent.prices:
            dollars = cost(model, usage, self.cfg.agent.prices) or 0.0  # the user's own prices win
        if result.get("session_id"):
            self.session_file.write_text(json.dumps({"session_id": result["session_id"]}) + "\n")
        spent = Proposal(description="", tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost_usd=dollars,
                         transcript=transcript)
        if result.get("is_error") or result.get("subtype") != "success":
            err = AgentFailed(f"claude: {result.get('subtype')}: {clirun.tail(str(result.get('result', '')), 2)}")
            err.proposal = spent
            raise err
        spent.description, spent.hypothesis = reply_lines(str(result.get("result") or ""))
        return spent

    def _session(self) -> str:
        try:
            return json.loads(self.session_file.read_text())["session_id"]
        except (OSError, ValueError, KeyError):
            return ""


def _usage(u: dict) -> Usage:
    read, write = int(u.get("cache_read_input_tokens") or 0), int(u.get("cache_creation_input_tokens") or 0)
    return Usage(tokens_in=int(u.get("input_tokens") or 0) + read + write, tokens_out=int(u.get("output_tokens") or 0),
                 cache_read=read, cache_write=write)


def reply_lines(text: str) -> tuple[str, str]:
    """DESCRIPTION / HYPOTHESIS lines of the final reply; else its first line as the description."""
    found = dict(re.findall(r"^\W*(DESCRIPTION|HYPOTHESIS)\W*:\s*(.+?)\s*$", text, re.MULTILINE | re.IGNORECASE))
    found = {k.upper(): v for k, v in found.items()}
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return found.get("DESCRIPTION") or first[:200] or "(no description)", found.get("HYPOTHESIS", "")


def transcribe(events: list[dict]) -> str:
    """A readable agent.log from stream-json events: what it said, each tool call, and every refusal."""
    out, refused = [], []
    for e in events:
        blocks = (e.get("message") or {}).get("content") if e.get("type") in ("assistant", "user") else None
        for b in blocks if isinstance(blocks, list) else []:
            if b.get("type") == "text":
                out.append(b["text"])
            elif b.get("type") == "tool_use":
                out.append(f"-> {b.get('name')} {json.dumps(b.get('input'))[:300]}")
            elif b.get("type") == "tool_result":
                content = b.get("content")
                flat = content if isinstance(content, str) else json.dumps(content)
                out.append(f"<- {'ERROR ' if b.get('is_error') else ''}{flat[:300]}")
                if b.get("is_error"):
                    refused.append(flat[:200])
        if e.get("type") == "result":
            out.append(f"\nresult: {e.get('subtype')}, {e.get('num_turns')} turns, ${e.get('total_cost_usd') or 0:.4f}")
            out += [f"permission denied: {d.get('tool_name')} {json.dumps(d.get('tool_input'))[:200]}"
                    for d in e.get("permission_denials") or []]
    out += [f"refused: {r}" for r in refused]
    return "\n".join(out) + "\n"
