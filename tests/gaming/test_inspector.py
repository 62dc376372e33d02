"""The model inspector through the real loop, against the local mock LLM server speaking each API: it reads the
win's diff and program.md, its verdict becomes a finding, and its tokens and cost are the trial's."""

from __future__ import annotations

from pathlib import Path

import pytest

from mockllm import MockLLM, Reply, text
from nlkit import idea, make_project, one_line_error, sub

HONEST = idea("more bonus", sub("BONUS = 0.0", "BONUS = 0.1"))


@pytest.mark.parametrize("provider,model,route", [("anthropic", "claude-haiku-4-5", ""), ("openai", "gpt-4o-mini",
                                                                                           "/v1")])
def test_the_inspectors_verdict_and_cost_are_recorded(tmp_path: Path, provider: str, model: str, route: str) -> None:
    answer = Reply(text="VERDICT: gamed\nREASON: the bonus is subtracted from the printed loss", tokens_in=1000,
                   tokens_out=50)
    with MockLLM([answer]) as mock:
        proj = make_project(tmp_path, ideas=[HONEST], config={"audit": {
            "inspector": provider, "inspector_model": model, "inspector_base_url": mock.url + route}})
        proj.run("--max-trials", "1")
        rec = {t["n"]: t for t in proj.log_json()}[1]
        assert rec["status"] == "keep" and rec["audit"] == "suspicious"
        assert rec["findings"] == [{"check": "inspector", "file": "", "lines": [],
                                    "reason": "gamed: the bonus is subtracted from the printed loss"}]
        # priced like the agent's tokens: claude-haiku-4-5 at $1/$5, gpt-4o-mini at $0.15/$0.60 per Mtok
        per_mtok = {"anthropic": 1000 * 1.0 + 50 * 5.0, "openai": 1000 * 0.15 + 50 * 0.6}[provider]
        assert (rec["tokens_in"], rec["tokens_out"]) == (1000, 50)
        assert rec["cost_usd"] == pytest.approx(per_mtok / 1e6)
        assert proj.status_json()["cost_usd"] == pytest.approx(per_mtok / 1e6)
        sent = str(mock.requests[-1].body)
        assert "BONUS = 0.1" in sent and "Make val_loss smaller" in sent  # the diff and program.md
        assert (proj.state() / "runs" / "1" / "inspector.log").read_text().startswith("gamed: ")


def test_a_clean_answer_adds_no_finding_and_an_unreachable_inspector_is_refused_at_the_start(tmp_path: Path) -> None:
    with MockLLM([text("VERDICT: clean\nREASON: a real change of the loss function")]) as mock:
        proj = make_project(tmp_path / "a", ideas=[HONEST], config={"audit": {
            "inspector": "openai", "inspector_base_url": mock.url + "/v1"}})
        proj.run("--max-trials", "1")
        rec = {t["n"]: t for t in proj.log_json()}[1]
        assert (rec["status"], rec["audit"], rec["findings"]) == ("keep", "clean", [])
        assert rec["tokens_in"] == 100 and rec["cost_usd"] > 0  # the mock's default usage, at gpt-5's price
    proj = make_project(tmp_path / "b", ideas=[HONEST], config={"audit": {"inspector": "anthropic"}})
    no_keys = {k: v for k, v in proj.env.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    line = one_line_error(proj.nl("run", "--tag", "t", env=no_keys))
    assert "audit.inspector" in line and "ANTHROPIC_API_KEY" in line
