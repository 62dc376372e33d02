"""The anthropic and openai agents, driven by the real loop (the real CLI) against the mock model server."""

from __future__ import annotations

from pathlib import Path

import pytest

from mockllm import MockLLM, call, text, tools
from nlkit import PREPARE, one_line_error
from nightlab.agents.prices import Usage, cost, price_for
from nightlab.agents.toolloop import FileTools
from nightlab.config import Price

EDIT_KEEP = [  # trial 1: read, edit the LR and the scratchpad, finish → keep (1.04 → 1.00)
    tools(call("read_file", path="train.py")),
    tools(call("edit_file", path="train.py", old="LR = 0.1", new="LR = 0.3"),
          call("write_file", path="scratchpad.md", content="# Scratchpad\n\ntried LR 0.3\n")),
    tools(call("finish", description="raise LR to 0.3", hypothesis="LR is too low")),
]


def api_project(new_project, agent: str, mock: MockLLM, key_var: str, **agent_cfg: object):
    cfg = {"agent": {"name": agent, "base_url": mock.url + ("/v1" if agent == "openai" else ""), **agent_cfg}}
    return new_project(config=cfg, extra_env={key_var: "sk-test-key"})


def test_anthropic_edit_lands_prepare_refused_and_429_retried(new_project) -> None:
    script = {
        "# Trial 1:": EDIT_KEEP,
        "# Trial 2:": [  # tries to edit the evaluation and escape the project, then a real (worse) change
            tools(call("edit_file", path="prepare.py", old="prepared", new="tampered"),
                  call("write_file", path="../outside.txt", content="x")),
            tools(call("edit_file", path="train.py", old="LR = 0.3", new="LR = 0.0")),
            tools(call("finish", description="drop LR to 0", hypothesis="maybe it overshoots")),
        ],
    }
    with MockLLM(script, errors=[429]) as mock:
        proj = api_project(new_project, "anthropic", mock, "ANTHROPIC_API_KEY", model="claude-sonnet-4-5")
        proj.run("--max-trials", "2")
    rows = proj.ledger()
    assert [r["status"] for r in rows] == ["baseline", "keep", "discard"]
    assert rows[1]["description"] == "raise LR to 0.3" and rows[1]["hypothesis"] == "LR is too low"
    assert rows[1]["tokens_in"] == 300 and rows[1]["tokens_out"] == 60
    assert rows[1]["cost_usd"] == pytest.approx((300 * 3 + 60 * 15) / 1e6)
    assert proj.status_json()["cost_usd"] == pytest.approx(rows[1]["cost_usd"] + rows[2]["cost_usd"])
    # the refusals reached the model as errors and the disk never saw them
    refused = [r for r in mock.tool_results() if "may not be changed" in r or "outside the project" in r]
    assert len(refused) == 2 and all(r.startswith("ERROR") for r in refused)
    assert (proj.worktree() / "prepare.py").read_text() == PREPARE
    assert not (proj.worktree().parent / "outside.txt").exists()
    assert "refused writes: prepare.py" in (proj.state() / "runs" / "2" / "agent.log").read_text()
    # one 429, retried: the first conversation step was sent twice
    assert [r.step for r in mock.requests[:2]] == [0, 0]
    first = mock.requests[0].body
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "## Trial 1: make ONE experiment" in first["messages"][0]["content"][0]["text"]
    assert mock.requests[0].api_key == "sk-test-key"
    assert "tried LR 0.3" in proj.git("show", "nightlab/t:scratchpad.md")


def test_openai_api_error_no_finish_and_a_kept_edit(new_project) -> None:
    script = {
        "# Trial 2:": EDIT_KEEP,
        "# Trial 3:": [tools(call("edit_file", path="train.py", old="LR = 0.3", new="LR = 0.2")),
                       text("I changed the learning rate."), text("Done.")],
    }
    with MockLLM(script, errors=[500, 500]) as mock:
        proj = api_project(new_project, "openai", mock, "OPENAI_API_KEY", model="local-model", max_retries=1)
        proc = proj.run("--max-trials", "3")
    rows = proj.ledger()
    assert [r["status"] for r in rows] == ["baseline", "rejected", "keep", "rejected"]
    assert rows[1]["reason"].startswith("openai API error: 500")
    assert [r.step for r in mock.requests[:3]] == [0, 0, 0]  # two 500s (one retry), then trial 2's first call
    assert rows[3]["reason"] == "the model stopped without calling finish"
    assert rows[3]["tokens_in"] == 300 and rows[3]["cost_usd"] == 0  # charged, at a local model's price
    log = (proj.state() / "runs" / "3" / "agent.log").read_text()
    assert "FAILED: the model stopped" in log and "no price" not in log
    assert (proc.stdout + proc.stderr).count("no price for model 'local-model'") == 1  # said once per run
    assert "finish" in mock.requests[-1].body["messages"][-1]["content"]  # the nudge before giving up
    assert proj.git("show", "nightlab/t:train.py").count("LR = 0.3") == 1


def test_turn_cap_ends_the_trial(new_project) -> None:
    script = [tools(call("read_file", path="train.py"))] * 5
    with MockLLM(script) as mock:
        proj = api_project(new_project, "anthropic", mock, "ANTHROPIC_API_KEY", max_turns=3)
        proj.run("--max-trials", "1")
    assert proj.trial(1)["reason"] == "no finish after 3 turns (max_turns)"
    assert len(mock.requests) == 3


def test_missing_key_is_one_line(new_project) -> None:
    proj = new_project(config={"agent": {"name": "anthropic"}})
    env = {k: v for k, v in proj.env.items() if not k.startswith("ANTHROPIC_")}
    line = one_line_error(proj.nl("run", "--tag", "t", "--max-trials", "1", env=env))
    assert "ANTHROPIC_API_KEY" in line


def test_file_tools_allowlist(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    for name, body in {"train.py": "LR = 1\n", "prepare.py": "x\n"}.items():
        (tmp_path / "ws" / name).write_text(body)
    (tmp_path / "ws" / "link.py").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "secret.txt").write_text("s")
    t = FileTools(tmp_path / "ws", ["train.py"], "scratchpad.md")
    assert t.call("read_file", {"path": "prepare.py"}) == ("x\n", False)
    for name, args in [("read_file", {"path": "../secret.txt"}), ("read_file", {"path": "link.py"}),
                       ("write_file", {"path": "prepare.py", "content": "y"}),
                       ("write_file", {"path": str(tmp_path / "secret.txt"), "content": "y"}),
                       ("edit_file", {"path": "train.py", "old": "nope", "new": "y"}),
                       ("read_file", {"path": ".git/config"}), ("shell", {"cmd": "ls"}), ("finish", None),
                       ("edit_file", {"path": "train.py"})]:
        out, err = t.call(name, args)
        assert err and out.startswith("error:"), (name, args, out)
    assert (tmp_path / "ws" / "prepare.py").read_text() == "x\n" and (tmp_path / "secret.txt").read_text() == "s"
    assert t.call("write_file", {"path": "scratchpad.md", "content": "n"})[1] is False
    assert t.call("edit_file", {"path": str(tmp_path / "ws" / "train.py"), "old": "LR = 1", "new": "LR = 2"})[1] is False
    assert (tmp_path / "ws" / "train.py").read_text() == "LR = 2\n"
    assert t.refused == ["prepare.py"]


def test_prices_prefix_override_and_cache() -> None:
    assert price_for("claude-sonnet-4-5-20250929", {}).input == 3.0
    assert price_for("gpt-4o-mini-2024", {}).output == 0.6  # the longest prefix wins over gpt-4o
    assert price_for("llama3.1:8b", {}) is None
    own = {"llama3.1": Price(input=1.0, output=2.0)}
    assert cost("llama3.1:8b", Usage(tokens_in=1_000_000, tokens_out=500_000), own) == pytest.approx(2.0)
    cached = Usage(tokens_in=1_000_000, cache_read=800_000, cache_write=100_000)
    assert cost("claude-sonnet-4", cached, {}) == pytest.approx(0.1 * 3 + 0.8 * 0.3 + 0.1 * 3.75)


def test_spend_is_shown_and_max_cost_stops_the_run(new_project) -> None:
    with MockLLM({"# Trial 1:": EDIT_KEEP}) as mock:
        proj = api_project(new_project, "anthropic", mock, "ANTHROPIC_API_KEY", model="claude-opus-4-1",
                           max_cost_usd=0.005)
        proc = proj.run()  # no --max-trials: only the cost cap can stop it after trial 1
    assert "stopped: reached max_cost_usd 0.005" in proc.stdout
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]
    assert proj.trial(1)["cost_usd"] == pytest.approx((300 * 15 + 60 * 75) / 1e6)
    status = proj.nl("status", "--tag", "t")
    assert "cost" in status.stdout and "$0.01" in status.stdout


def test_the_sdks_own_base_url_variable_is_honoured(new_project) -> None:
    with MockLLM({"# Trial 1:": EDIT_KEEP}) as mock:
        proj = new_project(config={"agent": {"name": "openai"}}, extra_env={"OPENAI_BASE_URL": mock.url + "/v1"})
        proj.run("--max-trials", "1")
    assert proj.trial(1)["status"] == "keep"
    assert mock.requests[0].body["model"] == "gpt-5" and "max_tokens" in mock.requests[0].body


def test_with_two_slots_the_api_agent_works_on_two_trials_at_once(new_project) -> None:
    def trial(old: str, new: str) -> list:
        return [tools(call("edit_file", path="train.py", old=old, new=new)),
                tools(call("finish", description=f"{old} → {new}", hypothesis="h"))]

    script = {"# Trial 1:": trial("LR = 0.1", "LR = 0.3"), "# Trial 2:": trial("BONUS = 0.0", "BONUS = 0.5")}
    with MockLLM(script, delay=0.5) as mock:
        proj = api_project(new_project, "anthropic", mock, "ANTHROPIC_API_KEY")
        proj.run("--max-trials", "2", "--slots", "2")
    which = [1 if "# Trial 1:" in str(r.body) else 2 for r in mock.requests]
    assert which[:2] in ([1, 2], [2, 1])  # both conversations began before either had its second reply
    # Whichever ended first was kept; which one that is depends on how the two threads were scheduled, and
    # every outcome is right. The other changed a line next to the kept one's, so when it still had to run,
    # or would have been kept, it could not be re-applied to the new best: discarded as stale, never kept
    # unmeasured. Only trial 1 (1.00), measured after trial 2 (0.54) was kept, is simply worse.
    kept, other = sorted(proj.ledger()[1:], key=lambda r: r["status"] != "keep")
    assert kept["status"] == "keep" and other["status"] == "discard"
    stale = other["reason"].startswith("stale: its change no longer applies")
    assert stale or (kept["n"] == 2 and other["reason"] == "" and other["delta"] > 0), other
