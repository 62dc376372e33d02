"""The baseline: the branch as the user committed it, run until its seed noise is known. Every trial is
judged against it or against a kept descendant, so a baseline that fails stops the loop."""

from __future__ import annotations

import statistics

from nightlab import per_example, program, screening
from nightlab.decide import deterministic, evidence_note, noise
from nightlab.errors import RunCrashed
from nightlab.lab import Lab
from nightlab.ledger import TrialRecord
from nightlab.trial import Next, Trial
from nightlab.types import RunOutcome, Status


class Baseline(Trial):
    def __init__(self, lab: Lab) -> None:
        first = program.current_phase(program.read_program(lab.cfg)[1], [], lab.cfg)
        rec = TrialRecord(n=0, description="baseline", commit_sha=lab.ws.head(), seed=0,
                          phase=first.label if first else "")
        lab.ws.reset(rec.commit_sha)
        lab.ledger.save(rec)
        # Two runs first: when they agree exactly the code is deterministic and more runs would add nothing.
        super().__init__(lab, rec, lab.ws, pending=min(2, lab.cfg.keep.noise_runs))
        self.short: list[float] = []  # its values at the screening budget

    def on_best(self) -> Next:
        return Next.RUN  # nothing is kept before it

    def _unpaired(self, out: RunOutcome) -> str:
        if self.examples:
            return per_example.mismatch(self.examples[0], out.examples)
        return "per-example values reported by only some runs" if self.rec.runs and out.examples else ""

    def _failed(self, status: Status, reason: str) -> Next:
        self.lab.ledger.delete(0)
        raise RunCrashed(f"the baseline failed ({status}: {reason}); fix it before searching "
                         f"(see {self.lab.run_dir(0)}/run.log)")

    def judge(self) -> Next:
        """When its runs are in: the seed noise, and whether the code is deterministic (runs identical)."""
        rec, lab, want = self.rec, self.lab, self.lab.cfg.keep.noise_runs
        if self.pending or self.running:
            return Next.WAIT
        same = deterministic(rec.runs) and all(ex.same(self.examples[0]) for ex in self.examples)
        if len(rec.runs) < want and not same:
            self.pending = want - len(rec.runs)
            return Next.RUN
        rec.metric, rec.status = statistics.fmean(rec.runs), Status.BASELINE
        examples = per_example.average(self.examples)
        rec.reason = evidence_note(noise(rec.runs), same, examples is not None)
        lab.ledger.set_meta(noise=noise(rec.runs), deterministic=same,
                            examples=len(examples) if examples is not None else None,
                            eval_se=per_example.standard_error(examples) if examples is not None else None)
        if screening.budget(lab.cfg) is not None:  # as many runs at the short budget: its noise there
            self.screening, self.pending = True, len(rec.runs)
            return Next.RUN
        return Next.RECORD

    def screened(self, value: float) -> Next:
        """One of its runs at the short budget: when all are in, their mean and noise are what screening uses."""
        self.short.append(value)
        if self.pending or self.running:
            return Next.WAIT
        self.screening, self.rec.screen = False, statistics.fmean(self.short)
        self.lab.ledger.set_meta(screen_noise=noise(self.short), screen_runs=len(self.short))
        return Next.RECORD
