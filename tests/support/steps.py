"""Fakes for running one step outside the runner: where it writes what it found, and role leases."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.awsrequest import AWSResponse

from shared.models import Evidence
from shared.store.isolation_groups import GroupClaim


@dataclass
class Notebook:
    """The attempt's `StepJournal` (`worker.journal`) as a step sees it, keeping what it was told."""

    remembered: list[dict[str, Any]] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)

    def remember(self, prior: dict[str, Any], planned: list[str]) -> None:
        self.remembered.append(prior)
        self.planned.extend(planned)

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


@dataclass
class MemoryGroups:
    """The service's isolation-group claims in memory (`shared.store.isolation_groups`)."""

    claims: dict[tuple[str, str, str], GroupClaim] = field(default_factory=dict)

    def group_claims(self, account_id: str, region: str) -> dict[str, GroupClaim]:
        return {vpc: c for (a, r, vpc), c in self.claims.items() if (a, r) == (account_id, region)}

    def claim_group(self, account_id: str, region: str, vpc_id: str, name: str) -> GroupClaim:
        return self.claims.setdefault((account_id, region, vpc_id), GroupClaim(vpc_id, name, time.time()))

    def record_group(self, account_id: str, region: str, vpc_id: str, name: str, group_id: str) -> bool:
        claim = self.claims.get((account_id, region, vpc_id))
        if claim is None or claim.name != name:
            return False
        self.claims[(account_id, region, vpc_id)] = replace(claim, group_id=group_id)
        return True

    def forget_group(self, account_id: str, region: str, vpc_id: str, group_id: str) -> bool:
        claim = self.claims.get((account_id, region, vpc_id))
        if claim is None or claim.group_id != group_id:
            return False
        del self.claims[(account_id, region, vpc_id)]
        return True

    def adopt_earlier_groups(self, account_id: str, region: str) -> list[str]:
        return []

    def known(self, vpc_id: str, group_id: str, *, account_id: str, region: str, age: float = 3600) -> None:
        """`group_id` recorded as the VPC's isolation group `age` seconds ago."""
        self.claims[(account_id, region, vpc_id)] = GroupClaim(
            vpc_id, "ec2-isolation-x", time.time() - age, group_id
        )


class AnyOrder:
    """Canned answers for a botocore client, by operation: a call takes the first answer of its operation
    whose `params` it was made with, whatever the order of the calls (botocore's Stubber wants one order
    of every call; a step that reads at once, in threads, has none). Every call is kept with its API
    parameters."""

    def __init__(self, client: Any) -> None:
        self._answers: dict[str, list[tuple[dict[str, Any], int, dict[str, Any]]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._made = threading.local()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-parameter-build.{service}", self._keep)
        client.meta.events.register(f"before-call.{service}", self._answer)

    def add(self, operation: str, response: dict[str, Any], params: dict[str, Any] | None = None) -> None:
        self._answers[operation].append((params or {}, 200, response))

    def add_error(
        self, operation: str, code: str, status: int = 400, params: dict[str, Any] | None = None
    ) -> None:
        self._answers[operation].append(
            (params or {}, status, {"Error": {"Code": code, "Message": "canned"}})
        )

    def called(self, operation: str) -> list[dict[str, Any]]:
        """The parameters of each call of `operation`, in the order made."""
        with self._lock:
            return [params for name, params in self.calls if name == operation]

    def assert_all_taken(self) -> None:
        left = {operation: len(answers) for operation, answers in self._answers.items() if answers}
        assert not left, f"answers not taken: {left}"

    def _keep(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self._made.params = dict(params)
        with self._lock:
            self.calls.append((model.name, dict(params)))

    def _answer(self, model: Any, **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        made = self._made.params
        with self._lock:
            answers = self._answers[model.name]
            found = next(
                (i for i, (params, _, _) in enumerate(answers) if params.items() <= made.items()), None
            )
            assert found is not None, f"unexpected call: {model.name} {made}"
            _, status, parsed = answers.pop(found)
        metadata = {"ResponseMetadata": {"HTTPStatusCode": status}}
        return AWSResponse("https://canned", status, {}, None), {**parsed, **metadata}
