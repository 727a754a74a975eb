"""What the check of an isolation group found and put right: ensure-isolation-sg starts it for each group
it uses (`worker.steps.network`), and it runs while swap-security-groups cuts the interfaces, which waits
for it (`StepContext.revoking`)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.models import TAG_PREFIX

#: The tag the service puts on its isolation groups (they are known by the ids in its table, never by it).
MANAGED_TAG = f"{TAG_PREFIX}managed"


@dataclass(frozen=True)
class GroupCheck:
    """What the check of an isolation group found and put right."""

    group_id: str
    #: Rules revoked (a new group's defaults, or rules someone added).
    revoked: int
    #: The managed tag was missing and is back.
    retagged: bool
    #: The group was created by this isolation (its rules are AWS's defaults).
    new: bool

    def summary(self) -> str:
        if self.new:
            return f"{self.revoked} default rule(s) of the new group {self.group_id} revoked"
        done = [f"{self.revoked} rule(s) found on {self.group_id} revoked"] * bool(self.revoked)
        done += [f"tag {MANAGED_TAG} of {self.group_id} restored"] * self.retagged
        return ", ".join(done)
