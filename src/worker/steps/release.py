"""The release steps: an isolation undone from the record's `prior_state`, in the order that reopens
least first (the instance never comes back online with deny-all credentials, and never rejoins its Auto
Scaling group before it can pass the group's health check):

1. `restore-instance-profile`: the prior profile associated again (the isolation profile removed when
   there was none);
2. `remove-credentials-deny`: the instance's entry taken out of its role's deny policy (under the role's
   lease, like the credentials step; the policy is deleted with its last entry);
3. `restore-security-groups`: each interface still attached gets its prior groups;
4. `rejoin-load-balancers`: registered again with its target groups and classic load balancers;
5. `rejoin-auto-scaling-group`: attached to its group again, once the network is back, when the group
   still exists and has room (attaching raises the group's desired capacity by one);
6. `restore-instance-attributes`: shutdown behaviour, stop and termination protection,
   `DeleteOnTermination`;
7. `untag-instance`: `ec2-isolation:id`, `:at`, `:source` removed, `ec2-isolation:released-at` added.

Each checks before it acts (`already`), and skips with the reason what no longer exists (an interface
detached since, a deleted group, role, profile or load balancer) or what the record does not know (an
older record without the newer prior-state fields restores what it has). Snapshots are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.models import StepRecord
from worker.steps.base import StepContext

#: Auto Scaling lifecycle states of an instance on its way out of a group.
_LEAVING = ("Detaching", "Detached")


@dataclass
class ReleaseContext(StepContext):
    """A step context for the release: `prior` is the record's prior state, `instance` the instance now."""

    #: Some interface has its prior groups again (done or already): the instance can pass a health check.
    network_back: bool = False


class Notes:
    """A release writes no prior state and no evidence: its steps' outcomes are its record."""

    def remember(self, prior: dict[str, Any]) -> None:
        raise AssertionError("a release step never writes the prior state")

    def keep_evidence(self, evidence: Any) -> None:
        raise AssertionError("a release step never takes evidence")

    def asking_snapshots(self, at: str) -> None:
        raise AssertionError("a release step never takes evidence")

    def will_ask_snapshots(self, at: str) -> None:
        raise AssertionError("a release step never takes evidence")


def release_outcome(name: str, done: list[str], already: list[str], skipped: list[str]) -> StepRecord:
    """A release step's outcome: `done` when it changed something, else `already`, else `skipped`; the
    detail tells all three."""
    detail = "; ".join([*done, *already, *skipped])
    if done:
        return StepRecord.done(name, detail)
    if already:
        return StepRecord.already(name, detail)
    return StepRecord.skipped(name, detail)
