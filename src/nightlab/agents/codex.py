"""The `codex` agent: the real `codex exec --json`, once per trial (as measured with the pinned codex 0.171.0).

Codex edits through shell commands, which it runs in its own sandbox: `-s workspace-write` (writes
only inside the workspace), no network, `/tmp` and $TMPDIR excluded from the writable roots, and a
command environment of only the core variables. Codex has no per-file rules: inside the bwrap agent
profile (clirun.sandboxed) protected files are read-only at the OS level; without it, the harness's diff
check rejects a trial that changed one and restores the file.

Keys: with OPENAI_API_KEY set, Codex talks to a loopback KeyProxy through a custom provider and holds
only a per-trial token. Without one, it uses your own Codex login (CODEX_HOME, default ~/.codex).
Codex has no turn cap; `[agent] timeout_s` bounds a trial.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nightlab.agents import Agent, clirun
from nightlab.agents.claude_code import reply_lines
from nightlab.agents.keyproxy import KeyProxy
from nightlab.agents.prices import Usage, cost
from nightlab.config import Config
from nightlab.errors import AgentFailed
from nightlab.types import Brief, Proposal, Status

TOKEN_VAR = "NIGHTLAB_PROXY_TOKEN"
LOCKDOWN = ["sandbox_workspace_write.exclude_slash_tmp=true", "sandbox_workspace_write.exclude_tmpdir_env_var=true",
            'shell_environment_policy.inherit="core"', 'approval_policy="never"']


class CodexAgent(Agent):
    reply = clirun.REPLY

    def __init__(self, config: Config, state_dir: Path) -> None:
        self.cfg, self.state_dir = config, Path(state_dir)
        self.cli = clirun.find_cli(config.agent.command, "codex")

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        home = clirun.private_home(self.state_dir, "codex")
        key = os.environ.get("OPENAI_API_KEY")
        if not key:  # the user's own Codex login lives in their CODEX_HOME
            login = os.environ.get("CODEX_HOME") or str(Path.home() / ".codex")
            return self._run(workspace, brief, self._env(home, {"CODEX_HOME": login}), [], sandbox=False)
        upstream = self.cfg.agent.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        with KeyProxy(upstream, {"authorization": f"Bearer {key}"}, self.cfg.agent.timeout_s) as proxy:
            (home / "codex").mkdir(exist_ok=True)
            env = self._env(home, {"CODEX_HOME": str(home / "codex"), TOKEN_VAR: proxy.token})
            provider = ['model_providers.nightlab.name="nightlab key proxy"', 'model_provider="nightlab"',
                        f'model_providers.nightlab.base_url="{proxy.url}"',
                        f'model_providers.nightlab.env_key="{TOKEN_VAR}"',
                        'model_providers.nightlab.wire_api="responses"',
                        f"model_providers.nightlab.request_max_retries={self.cfg.agent.max_retries}"]
            return self._run(workspace, brief, env, provider, sandbox=True)

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        """Each trial is a fresh, ephemeral session: the brief and the scratchpad carry the memory."""

    def _env(self, home: Path, extra: dict[str, str]) -> dict[str, str]:
        env = clirun.base_env(home, extra)
        node = shutil.which("node")  # the npm package's launcher is a node script
        if node:
            env["PATH"] = f"{Path(node).parent}:{env['PATH']}"
        return env

    def argv(self, workspace: Path, brief: Brief, overrides: list[str]) -> list[str]:
        argv = [self.cli, "exec", "--json", "--skip-git-repo-check", "--ephemeral", "-C", str(workspace),
                "-s", "workspace-write"]
        for setting in LOCKDOWN + overrides:
            argv += ["-c", setting]
        if self.cfg.agent.model:
            argv += ["-m", self.cfg.agent.model]
        return argv + [clirun.system_prompt(self.cfg) + "\n\n" + brief.text]

    def _run(self, workspace: Path, brief: Brief, env: dict[str, str], overrides: list[str], sandbox: bool) -> Proposal:
        argv, note = self.argv(workspace, brief, overrides), "sandbox: none (your own login lives outside it)"
        if sandbox:
            installs = clirun.install_dirs(self.cli, shutil.which("node"))
            argv, env, note = clirun.sandboxed(argv, workspace, Path(env["HOME"]), env, self.cfg, installs)
        proc = clirun.run_cli(argv, workspace, env, self.cfg.agent.timeout_s, Path(self.cli).name)
        events = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        usage, said, log = Usage(), [], [note]
        for e in events:
            item = e.get("item") or {}
            if e.get("type") == "turn.completed":
                u = e.get("usage") or {}
                usage.add(Usage(tokens_in=int(u.get("input_tokens") or 0), tokens_out=int(u.get("output_tokens") or 0),
                                cache_read=int(u.get("cached_input_tokens") or 0)))
            elif e.get("type") == "item.completed" and item.get("type") == "agent_message":
                said.append(item.get("text", ""))
                log.append(item.get("text", ""))
            elif e.get("type") == "item.completed" and item.get("type") == "command_execution":
                log.append(f"-> {item.get('command')}\n<- exit {item.get('exit_code')}: "
                           f"{str(item.get('aggregated_output'))[:400]}")
            elif e.get("type") in ("turn.failed", "error") or item.get("type") == "error":
                log.append(f"error: {json.dumps(e)[:400]}")
        dollars = cost(self.cfg.agent.model, usage, self.cfg.agent.prices) if self.cfg.agent.model else None
        transcript = "\n".join(log) + f"\n\ntokens: {usage.tokens_in} in ({usage.cache_read} cached), "
        transcript += f"{usage.tokens_out} out\n"
        if proc.stderr.strip():
            transcript += f"stderr: {clirun.tail(proc.stderr)}\n"
        spent = Proposal(description="", tokens_in=usage.tokens_in, tokens_out=usage.tokens_out,
                         cost_usd=dollars or 0.0, transcript=transcript)
        failed = next((e for e in events if e.get("type") == "turn.failed"), None)
        if proc.returncode != 0 or failed or not said:
            why = json.dumps(failed.get("error"))[:300] if failed else clirun.tail(proc.stderr) or "no reply"
            err = AgentFailed(f"codex exited {proc.returncode}: {why}")
            err.proposal = spent
            raise err
        spent.description, spent.hypothesis = reply_lines(said[-1])
        return spent
