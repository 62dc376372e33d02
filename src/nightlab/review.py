"""The audit in the loop and after it: a judged trial's verdict (held when suspicious and `[audit] on_suspicious =
"hold"`), and a person's `nightlab accept N` / `nightlab reject N` of a held win."""

from __future__ import annotations

import logging
from pathlib import Path

from nightlab import audit, metrics
from nightlab.config import Config
from nightlab.errors import AgentFailed, NightlabError, UsageError
from nightlab.lab import Lab
from nightlab.ledger import Ledger, TrialRecord
from nightlab.types import Status
from nightlab.views import commit_message
from nightlab.workspace import Workspace

log = logging.getLogger(__name__)


def audited(lab: Lab, rec: TrialRecord, status: Status) -> Status:
    """`rec`'s audit verdict and findings, recorded on it; the status it ends with (HELD: a suspicious keep held)."""
    cfg = lab.cfg
    if not cfg.audit.enabled or not rec.parent or not rec.commit_sha:
        return status
    files = cfg.project.editable
    parent = {f: _show(lab.ws, rec.parent, f) for f in files}
    child = {f: _show(lab.ws, rec.commit_sha, f) for f in files}
    findings = audit.audit_change(parent, child, cfg.metric.name,
                                  audit.split_paths(cfg.data.val, cfg.data.test, cfg.data.select), _gain(lab, rec))
    if status == Status.KEEP and cfg.audit.inspector:
        findings += _inspected(lab, rec)
    rec.audit, rec.findings = audit.verdict(findings), audit.as_records(findings)
    if not findings:
        return status
    checks = audit.summary(rec.findings)
    log.warning("trial %d: the audit finds its change suspicious: %s", rec.n, checks)
    if status == Status.KEEP and cfg.audit.on_suspicious == "hold":
        rec.reason = f"held by the audit ({checks}): nightlab accept {rec.n} / nightlab reject {rec.n}"
        return Status.HELD
    return status  # warn: the verdict is in the ledger, the views and the commit message; the keep rule's call stands


def check_inspector(cfg: Config, state_dir: Path) -> None:
    """Fail at the start, not at the first win, when the inspector cannot be built (its SDK or key is missing)."""
    if cfg.audit.enabled and cfg.audit.inspector:
        from nightlab.inspector import Inspector

        try:
            Inspector(cfg, state_dir)
        except UsageError as e:  # the agents' message, about the inspector
            raise UsageError(f"{cfg.path}: audit.inspector: {e}") from None


def _inspected(lab: Lab, rec: TrialRecord) -> list[audit.Finding]:
    """The model inspector's word on a win; its tokens and cost are the trial's, like the agent's."""
    from nightlab.inspector import Inspector

    program = lab.cfg.root / lab.cfg.project.program
    text = program.read_text(errors="replace") if program.is_file() else ""
    tail = metrics.log_tail(lab.run_dir(rec.n) / "run.log")
    try:
        seen = Inspector(lab.cfg, lab.state_dir).inspect(lab.ws.patch(rec.commit_sha), text, tail)
    except AgentFailed as e:
        log.warning("trial %d: the inspector failed (%s); the static audit stands alone", rec.n, e)
        return []
    rec.cost_usd += seen.cost_usd
    rec.tokens_in += seen.usage.tokens_in
    rec.tokens_out += seen.usage.tokens_out
    (lab.run_dir(rec.n) / "inspector.log").write_text(f"{seen.verdict}: {seen.reason}\n"
                                                       f"tokens {seen.usage.tokens_in} in, {seen.usage.tokens_out} out,"
                                                       f" ${seen.cost_usd:.4f}\n")
    return [] if seen.verdict == "clean" else [audit.Finding("inspector", f"{seen.verdict}: {seen.reason}")]


def _gain(lab: Lab, rec: TrialRecord) -> audit.Gain | None:
    if rec.delta is None:
        return None
    sign = -1.0 if lab.cfg.metric.goal == "minimize" else 1.0
    earlier = [sign * delta for delta in lab.ledger.deltas(Status.KEEP)]
    return audit.Gain(sign * rec.delta, earlier)


def _show(ws: Workspace, commit: str, path: str) -> str:
    try:
        return ws.show(commit, path)
    except NightlabError:  # not in that commit (an editable file the change added or removed)
        return ""


def held(ledger: Ledger, n: int) -> TrialRecord:
    rec = ledger.trial(n)
    if rec is None:
        raise UsageError(f"no trial {n} in this tag")
    if rec.status != Status.HELD:
        raise UsageError(f"trial {n} is not held (its status is {rec.status}); only a held win can be accepted "
                         "or rejected")
    return rec


def accept(cfg: Config, tag: str, ledger: Ledger, n: int) -> TrialRecord:
    """A held win becomes a keep: the branch moves to it (only while it is still on the best it was judged on)."""
    rec, best = held(ledger, n), ledger.best()
    assert best is not None, "a held trial comes after the baseline"
    if rec.parent != best.commit_sha:
        raise UsageError(f"trial {n} was judged against an earlier best; trial {best.n} was kept since, so its gain "
                         f"over the best is unmeasured: reject it, and queue its change again if you trust it")
    ws = Workspace(cfg.root, tag, list(cfg.project.editable), cfg.project.scratchpad)
    ws.open(fresh=False, best=best.commit_sha)
    rec.status, rec.audit = Status.KEEP, audit.AuditVerdict.ACCEPTED
    rec.reason = "accepted after the audit"
    rec.commit_sha = ws.amend(rec.commit_sha, commit_message(rec, best, ledger.get("noise"), cfg.metric.name))
    ws.reset(rec.commit_sha)  # the branch moves to it
    ws.mark(rec.n, rec.commit_sha)
    ledger.save(rec)
    return rec


def reject(ledger: Ledger, n: int) -> TrialRecord:
    """A held win becomes a discard; the branch was never moved to it."""
    rec = held(ledger, n)
    rec.status, rec.audit = Status.DISCARD, audit.AuditVerdict.REJECTED
    rec.reason = "rejected after the audit"
    ledger.save(rec)
    return rec
