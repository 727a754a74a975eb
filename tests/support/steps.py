"""Fakes for running one step outside the runner: where it writes what it found, and role leases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.models import Evidence


@dataclass
class Notebook:
    """The runner's `StepJournal` as a step sees it, keeping what it was told."""

    remembered: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)

    def remember(self, prior: dict[str, Any]) -> None:
        self.remembered.append(prior)

    def keep_evidence(self, evidence: Evidence) -> None:
        self.evidence.append(evidence)


@dataclass
class MemoryLeases:
    """Role leases in memory; `busy` roles answer 'held by someone else' that many times first."""

    busy: dict[str, int] = field(default_factory=dict)
    held: dict[tuple[str, str], str] = field(default_factory=dict)
    taken: list[str] = field(default_factory=list)

    def take_role_lease(self, account_id: str, role_name: str, owner: str, *, seconds: float) -> bool:
        if self.busy.get(role_name, 0) > 0:
            self.busy[role_name] -= 1
            return False
        holder = self.held.get((account_id, role_name))
        if holder not in (None, owner):
            return False
        self.held[(account_id, role_name)] = owner
        self.taken.append(role_name)
        return True

    def release_role_lease(self, account_id: str, role_name: str, owner: str) -> None:
        if self.held.get((account_id, role_name)) == owner:
            del self.held[(account_id, role_name)]
