"""What every release step shares: its context (`ReleaseContext`: the record's prior state, the instance
now, whether the network is back) and how it words its outcome (`release_outcome`). A release step
writes no prior state and no evidence: the notes it is given (`worker.journal.ReleaseJournal`) refuse
them. Each release step lives beside the step it undoes (a forward step and its inverse in one module);
their order is `worker.steps.RELEASE`.

Each checks before it acts (`already`), and skips with the reason what no longer exists (an interface
detached since, a deleted group, role, profile or load balancer) or what the record does not know (an
older record without the newer prior-state fields restores what it has). Snapshots are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.models import StepRecord
from worker.steps.base import StepContext


@dataclass
class ReleaseContext(StepContext):
    """A step context for the release: `prior` is the record's prior state, `instance` the instance now."""

    #: Some interface has its prior groups again (done or already): the instance can pass a health check.
    network_back: bool = False


def release_outcome(name: str, done: list[str], already: list[str], skipped: list[str]) -> StepRecord:
    """A release step's outcome: `done` when it changed something, else `already`, else `skipped`; the
    detail tells all three."""
    detail = "; ".join([*done, *already, *skipped])
    if done:
        return StepRecord.done(name, detail)
    if already:
        return StepRecord.already(name, detail)
    return StepRecord.skipped(name, detail)
