"""The step catalogue's shape: each step is a small class with a name, the IAM actions it needs and one
`run` that checks before it acts, so a redelivered message is harmless. A step returns its outcome as a
`StepRecord` (done, already, skipped) and raises on failure. Its `check` is the dry run of `run`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from shared.aws import AccountSession
from shared.config import WorkerSettings
from shared.models import Evidence, PriorState, Source, StepRecord, Target
from shared.store.isolation_groups import GroupClaim
from worker.instance import Instance
from worker.steps.group_check import GroupCheck

if TYPE_CHECKING:
    from worker.steps.checks import PolicySimulator


class Notes(Protocol):
    """Where a step writes what it found before it changes anything (the runner's `StepJournal`)."""

    def remember(self, prior: dict[str, Any]) -> None: ...

    def keep_evidence(self, evidence: Evidence) -> None: ...

    def asking_snapshots(self, at: str) -> None:
        """On record before CreateSnapshots: from `at` on, snapshots tagged with the isolation's id may be
        its own (a retry after a crash looks for them; before it, nothing the service took can be)."""
        ...

    def will_ask_snapshots(self, at: str) -> None:
        """The phase will ask for snapshots (`Step.prior`): `at` rides with the phase's prior-value write,
        and `asking_snapshots` then has nothing left to write."""
        ...


class IsolationGroups(Protocol):
    """The service's own record of each VPC's isolation group (`shared.store.isolation_groups`)."""

    def group_claims(self, account_id: str, region: str) -> dict[str, GroupClaim]: ...

    def claim_group(self, account_id: str, region: str, vpc_id: str, name: str) -> GroupClaim: ...

    def record_group(self, account_id: str, region: str, vpc_id: str, name: str, group_id: str) -> bool: ...

    def forget_group(self, account_id: str, region: str, vpc_id: str, group_id: str) -> bool: ...

    def adopt_earlier_groups(self, account_id: str, region: str) -> list[str]: ...


class RoleLeases(Protocol):
    """Per-role serialization (`shared.store.IsolationStore`)."""

    def take_role_lease(self, account_id: str, role_name: str, owner: str, *, seconds: float) -> bool: ...

    def release_role_lease(self, account_id: str, role_name: str, owner: str) -> None: ...


@dataclass
class StepContext:
    """What a step may use: the target account's clients, the instance as described now, the episode's
    prior state, settings, and where to write what it finds."""

    isolation_id: str
    source: Source
    target: Target
    instance: Instance
    account: AccountSession
    settings: WorkerSettings
    #: The episode's prior state as the record keeps it (the instance before its first isolation).
    prior: PriorState
    notes: Notes
    leases: RoleLeases
    groups: IsolationGroups
    #: The episode's evidence as the record keeps it (None: none taken yet).
    evidence: Evidence | None = None
    #: When an attempt of this isolation called CreateSnapshots without recording the result (None: no
    #: attempt did): the only snapshots a retry may take for its own.
    snapshots_asked_at: str | None = None
    #: None: `worker.consistency.pause`.
    sleep: Callable[[float], None] | None = None
    #: Filled by ensure-isolation-sg: the isolation security group of each VPC.
    isolation_groups: dict[str, str] = field(default_factory=dict)
    #: Filled by ensure-isolation-sg: the check of each group it uses (its rules revoked, its tag put
    #: back), under way while swap-security-groups cuts the interfaces.
    revoking: dict[str, Future[GroupCheck]] = field(default_factory=dict)
    #: The region's isolation-group claims by VPC, as read from the table with the instance; None: not
    #: looked up (ensure-isolation-sg reads them).
    groups_seen: dict[str, GroupClaim] | None = None
    #: What the phase's steps read ahead for its prior state (`Step.prior`), by what was read: a step's
    #: next `run` takes it from here rather than read it twice.
    read: dict[str, Any] = field(default_factory=dict)

    @property
    def ec2(self) -> Any:
        return self.account.client("ec2")

    @property
    def iam(self) -> Any:
        return self.account.client("iam")

    @property
    def partition(self) -> str:
        return str(self.account.session.get_partition_for_region(self.target.region))

    @property
    def instance_arn(self) -> str:
        target = self.target
        return f"arn:{self.partition}:ec2:{target.region}:{target.account_id}:instance/{target.instance_id}"

    def remember(self, **prior: Any) -> None:
        """Write fields of the prior state before the change they describe; a field the episode knows
        already keeps its value (the instance as it was, not as a retry finds it)."""
        unknown = {
            name: value
            for name, value in prior.items()
            if value is not None and getattr(self.prior, name) is None
        }
        if not unknown:
            return
        self.prior = self.prior.model_copy(update=unknown)
        dumped = self.prior.model_dump(mode="json")
        self.notes.remember({name: dumped[name] for name in unknown})

    def keep_evidence(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.notes.keep_evidence(evidence)


class Step(ABC):
    #: kebab-case verb-noun: the name in the record, the logs and the metrics.
    name: ClassVar[str]
    #: The IAM actions `run` calls in the target account (the member role grants exactly their union).
    permissions: ClassVar[tuple[str, ...]]
    #: Instances of one role take turns (their step writes one policy of that role, under its lease):
    #: a batch runs them one after another rather than have them wait on each other.
    one_writer_per_role: ClassVar[bool] = False

    @abstractmethod
    def run(self, ctx: StepContext) -> StepRecord: ...

    def prior(self, ctx: StepContext) -> dict[str, Any]:
        """The prior-state fields this step's change would overwrite, read before any change of its
        phase: the engine writes every step's in one write before the phase's first change. {}: the
        step reads nothing ahead (its prior state is the instance as described, or it remembers its own
        before its change)."""
        return {}

    def check(self, ctx: StepContext, simulator: PolicySimulator) -> StepRecord:
        """A dry run of `run`: the same reads, and in place of each change a permission check
        (`worker.steps.checks`: EC2's DryRun, or the dry run's `simulator`): `would`, `unverified`,
        `failed`, or `already` / `skipped` as `run` would say. Changes nothing. Every step of the plan
        has one (tests/unit checks it)."""
        raise NotImplementedError(f"{self.name} has no dry-run check")
