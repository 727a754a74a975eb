"""The step catalogue's shape: each step is a small class with a name, the IAM actions it needs and one
`plan`: it reads what it would change and decides once, either settled (`already`, `skipped`: nothing to
change) or the changes it would make, with the prior values they overwrite. The same plan is applied
(`run`: its prior values and that it plans changes on record, then its changes; `done`) or, in a dry
run, checked (`check`: each change's permission, EC2's `DryRun` or the policy simulator;
`worker.steps.checks`). A phase plans its steps ahead and puts every plan on record in one write
(`StepContext.note_plans`); a step's `run` applies the plan made for it. A step raises on failure; a
redelivered message finds its changes in place, so a retry is harmless: `already`, or `done` when an
earlier attempt planned them and stopped before recording its outcome."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from shared.aws import AccountSession
from shared.config import WorkerSettings
from shared.models import Evidence, PriorState, Source, StepRecord, StepStatus, Target
from shared.store.isolation_groups import GroupClaim
from worker.at_once import each_at_once
from worker.instance import Instance
from worker.steps.checks import Action, Check, PolicySimulator, ec2_dry_run, outcome
from worker.steps.group_check import GroupCheck


class Notes(Protocol):
    """Where a step writes what it found before it changes anything (`worker.journal.StepJournal`)."""

    def remember(self, prior: dict[str, Any], planned: list[str]) -> None:
        """Prior-state fields and the steps whose changes follow, in one write before the changes."""
        ...

    def keep_evidence(self, evidence: Evidence) -> None: ...

    def asking_snapshots(self, at: str) -> None:
        """On record before CreateSnapshots: from `at` on, snapshots tagged with the isolation's id may be
        its own (a retry after a crash looks for them; before it, nothing the service took can be)."""
        ...

    def will_ask_snapshots(self, at: str) -> None:
        """The step's plan asks for snapshots: `at` rides with the write of the phase's plans
        (`StepContext.note_plans`), and `asking_snapshots` then has nothing left to write."""
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
    #: The steps whose planned changes are on record (`IsolationRecord.planned`); None: the procedure
    #: puts no plan on record (a release, which keeps no prior state; a dry run, which changes nothing).
    planned: frozenset[str] | None = None
    #: The steps an earlier attempt planned and recorded no outcome of: one that finds its change in
    #: place made it (`done`, not `already`).
    planned_earlier: frozenset[str] = frozenset()
    #: Filled by ensure-isolation-sg: the isolation security group of each VPC.
    isolation_groups: dict[str, str] = field(default_factory=dict)
    #: Filled by ensure-isolation-sg: the check of each group it uses (its rules revoked, its tag put
    #: back), under way while swap-security-groups cuts the interfaces.
    revoking: dict[str, Future[GroupCheck]] = field(default_factory=dict)
    #: The region's isolation-group claims by VPC, as read from the table with the instance; None: not
    #: looked up (ensure-isolation-sg reads them).
    groups_seen: dict[str, GroupClaim] | None = None
    #: The plan is for a dry run (checked, never applied): a step whose apply path learns something from
    #: AWS's refusal (IAM's limit on a role's inline policies) reads it ahead instead.
    dry_run: bool = False

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

    def note_plans(self, plans: dict[type[Step], Plan]) -> None:
        """Put `plans` (by step) on record before any of their changes, in one write: the prior-state
        fields they read (a field the episode knows already keeps its value: the instance as it was,
        not as a retry finds it) and, where the procedure records plans, the steps that will change
        something. Nothing to write when all of it is on record."""
        unknown = {
            name: value
            for plan in plans.values()
            for name, value in plan.prior.items()
            if value is not None and getattr(self.prior, name) is None
        }
        planned = sorted(
            step.name
            for step, plan in plans.items()
            if plan.changes
            and not step.claimed_elsewhere
            and self.planned is not None
            and step.name not in self.planned
        )
        if not unknown and not planned:
            return
        self.prior = self.prior.model_copy(update=unknown)
        dumped = self.prior.model_dump(mode="json")
        self.notes.remember({name: dumped[name] for name in unknown}, planned)
        if planned:
            self.planned = (self.planned or frozenset()) | set(planned)

    def keep_evidence(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.notes.keep_evidence(evidence)


@dataclass(frozen=True)
class Change:
    """One change of a step's plan: what it does, in the record's words ("set shutdown behaviour stop (is
    terminate)"), the AWS call that makes it, and what a dry run asks in its place."""

    what: str
    #: The call that makes the change (a client's method), with its parameters.
    call: Callable[..., Any]
    params: dict[str, Any] = field(default_factory=dict)
    #: The IAM action the policy simulator is asked about, for a call that takes no `DryRun` (IAM, Auto
    #: Scaling, load balancers, instance-profile associations); None: `call(DryRun=True, **params)`.
    simulated: Action | None = None
    #: The further actions the change needs, asked of the policy simulator after the call's own check
    #: (`iam:PassRole` for an association, `ec2:LockSnapshot` for the snapshots it takes).
    also: tuple[Action, ...] = ()
    #: How the change is made when it is more than the call (under a lease, retried while AWS propagates
    #: it); None: the call. A dry run still checks the call.
    apply_by: Callable[[], Any] | None = None

    def apply(self) -> Any:
        return self.apply_by() if self.apply_by is not None else self.call(**self.params)

    def checks(self, simulator: PolicySimulator) -> list[Check]:
        if self.simulated is not None:
            call = simulator.check(self.simulated)
        else:
            call = ec2_dry_run(self.what, self.call, **self.params)
        return [call, *(simulator.check(action) for action in self.also)]


@dataclass(frozen=True)
class Plan:
    """What a step decided from one read: the prior-state fields its change would overwrite (on record
    before any change), and either its settled outcome or the changes it would make."""

    #: Prior-state fields, written before the first change (a field the episode knows keeps its value).
    prior: dict[str, Any] = field(default_factory=dict)
    #: Nothing to change (`already`, `skipped`): the step's outcome as it is.
    settled: StepRecord | None = None
    changes: tuple[Change, ...] = ()
    #: The `done` detail: a text, or made from what the changes returned (in order); or the outcome as
    #: the changes found it (a concurrent worker made the change first: `already`).
    done: str | Callable[[list[Any]], str | StepRecord] = ""
    #: What needs no change, told after the changes (in `done` and in a dry run's outcome).
    unchanged: str = ""
    #: The changes are independent of each other: made side by side (each interface of an instance).
    side_by_side: bool = False
    #: The episode's evidence the step keeps on record once its changes are made (or as it settled): the
    #: evidence, or made from what the changes returned; None: none. A dry run keeps none.
    evidence: Evidence | Callable[[list[Any]], Evidence] | None = None

    @classmethod
    def nothing(cls, settled: StepRecord, **prior: Any) -> Plan:
        return cls(prior=prior, settled=settled)

    @classmethod
    def making(
        cls,
        done: str | Callable[[list[Any]], str | StepRecord],
        *changes: Change,
        unchanged: str = "",
        side_by_side: bool = False,
        **prior: Any,
    ) -> Plan:
        return cls(prior=prior, changes=changes, done=done, unchanged=unchanged, side_by_side=side_by_side)


class Step(ABC):
    #: kebab-case verb-noun: the name in the record, the logs and the metrics.
    name: ClassVar[str]
    #: The IAM actions the step calls in the target account (the member role grants exactly their union).
    permissions: ClassVar[tuple[str, ...]]
    #: Instances of one role take turns (their step writes one policy of that role, under its lease):
    #: a batch runs them one after another rather than have them wait on each other.
    one_writer_per_role: ClassVar[bool] = False
    #: The step's changes are on record before they are made some other way (the isolation group's
    #: claim in the service's table): its plan is not put on record (`StepContext.note_plans`).
    claimed_elsewhere: ClassVar[bool] = False

    @abstractmethod
    def plan(self, ctx: StepContext) -> Plan:
        """Read what the step would change and decide: settled, or the changes with their prior values.
        Changes nothing (a dry run plans too)."""

    def run(self, ctx: StepContext, plan: Plan | None = None) -> StepRecord:
        """The plan applied (`plan`, as its phase made it ahead; None: made now): its prior values on
        record, then its changes, then the evidence it keeps; `done` (or its settled outcome)."""
        if plan is None:
            plan = self.plan(ctx)
        ctx.note_plans({type(self): plan})
        outcome = self._applied(ctx, plan)
        if outcome.status is StepStatus.ALREADY and self.name in ctx.planned_earlier:
            # An earlier attempt planned this change and stopped before its outcome was on record.
            return StepRecord.done(
                self.name, f"{outcome.detail} (made by an earlier attempt, which stopped before recording it)"
            )
        return outcome

    def _applied(self, ctx: StepContext, plan: Plan) -> StepRecord:
        if plan.settled is not None:
            results: list[Any] = []
        elif plan.side_by_side:
            results = each_at_once(lambda change: change.apply(), list(plan.changes))
        else:
            results = [change.apply() for change in plan.changes]
        if plan.evidence is not None:
            ctx.keep_evidence(plan.evidence(results) if callable(plan.evidence) else plan.evidence)
        if plan.settled is not None:
            return plan.settled
        done = plan.done(results) if callable(plan.done) else plan.done
        if isinstance(done, StepRecord):
            return done
        return StepRecord.done(self.name, "; ".join(part for part in (done, plan.unchanged) if part))

    def check(self, ctx: StepContext, simulator: PolicySimulator) -> StepRecord:
        """The plan checked, not applied (a dry run): `would`, `unverified` or `failed` for its changes,
        or its settled outcome. Changes nothing."""
        plan = self.plan(ctx)
        ctx.note_plans({type(self): plan})
        if plan.settled is not None:
            return plan.settled
        checks = [check for change in plan.changes for check in change.checks(simulator)]
        return outcome(self.name, checks, plan.unchanged)
