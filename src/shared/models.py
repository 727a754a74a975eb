"""The data that crosses a boundary: webhook requests, queue messages, isolation records.

Constraints live in the types so bad input fails at the edge (a 4xx in ingest, the DLQ in the worker)
and never reaches the logic. Patterns use explicit ASCII classes: pydantic's regex engine treats `\\d`
as any Unicode digit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.lifecycle import Status

INSTANCE_ID_PATTERN = r"^i-[0-9a-f]{8}([0-9a-f]{9})?$"
ACCOUNT_ID_PATTERN = r"^[0-9]{12}$"
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"
ISOLATION_ID_PATTERN = r"^iso-[0-9a-f]{32}$"

InstanceId = Annotated[str, StringConstraints(pattern=INSTANCE_ID_PATTERN)]
AccountId = Annotated[str, StringConstraints(pattern=ACCOUNT_ID_PATTERN)]
Region = Annotated[str, StringConstraints(pattern=REGION_PATTERN)]

#: Every tag the service writes starts with this prefix.
TAG_PREFIX = "ec2-isolation:"
#: The isolation that holds the instance; while it is on the instance, the instance's episode is open.
ISOLATION_ID_TAG = f"{TAG_PREFIX}id"

# Namespace for isolation ids derived from a trigger's event id, so a redelivered event maps to the
# same record instead of starting a second isolation.
_TRIGGER_NAMESPACE = uuid.UUID("6f1d3c4e-2b8a-4f57-9a51-0c3e7d9b2a10")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso8601(moment: datetime) -> str:
    """ISO-8601 UTC with a `Z`, millisecond precision: sorts as text, reads as time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one ISO-8601 stamp to another (None when either is missing)."""
    if not start or not end:
        return None
    return (_parsed(end) - _parsed(start)).total_seconds()


def _parsed(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def new_isolation_id() -> str:
    return f"iso-{uuid.uuid4().hex}"


def trigger_isolation_id(source: str, event_id: str) -> str:
    return f"iso-{uuid.uuid5(_TRIGGER_NAMESPACE, f'{source}:{event_id}').hex}"


class Source(StrEnum):
    WEBHOOK = "webhook"
    GUARDDUTY = "guardduty"
    TAG = "tag"
    SECURITY_HUB = "securityhub"
    #: A CloudTrail call that undid part of an isolation: the repair (never coalesced, never exempt).
    TAMPER = "tamper"


class StepStatus(StrEnum):
    DONE = "done"
    ALREADY = "already"
    SKIPPED = "skipped"
    FAILED = "failed"
    #: A dry run: the step would change something, and the permission check passed.
    WOULD = "would"
    #: A dry run: the step would change something, and nothing could check the permission without acting.
    UNVERIFIED = "unverified"


class Model(BaseModel):
    """The project's models. Each one's validator is built on its first use (`defer_build`): a function's
    cold start builds only the models its own path uses (the worker never the webhook's, the ingest never
    a GuardDuty finding's). With SnapStart, `shared.ahead_of_time` builds them all during the init that the
    snapshot captures."""

    model_config = ConfigDict(defer_build=True)


class IsolationRequest(Model):
    """Body of `POST /isolate` (docs/api.md). Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    instance_id: InstanceId = Field(description="EC2 instance id, i-xxxxxxxx or i-xxxxxxxxxxxxxxxxx")
    account_id: AccountId = Field(description="12-digit AWS account id that owns the instance")
    region: Region = Field(
        description="AWS region of the instance: a region of the aws partition, such as eu-west-1",
        examples=["eu-west-1"],
    )
    reason: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="Why the instance is being isolated (free text)"
    )
    requested_by: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="Who asked for the isolation (free text)"
    )
    dry_run: bool = Field(
        default=False,
        description="Check what the isolation would do, and whether it is permitted, without changing "
        "anything (the record ends CHECKED or FAILED)",
    )

    def wire(self) -> dict[str, Any]:
        """The request as JSON, `dry_run` only when true: a real isolation's queue message and
        idempotency hash keep the shape they had before dry runs (a worker not yet updated reads it)."""
        return self.model_dump(mode="json", exclude=None if self.dry_run else {"dry_run"})


class Target(Model):
    """The instance an isolation acts on."""

    model_config = ConfigDict(frozen=True)

    account_id: AccountId
    region: Region
    instance_id: InstanceId

    @classmethod
    def of(cls, request: IsolationRequest) -> Target:
        return cls(account_id=request.account_id, region=request.region, instance_id=request.instance_id)

    @property
    def key(self) -> str:
        return f"{self.account_id}#{self.region}#{self.instance_id}"

    @property
    def arn(self) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account_id}:instance/{self.instance_id}"


class StepRecord(Model):
    """One step's outcome, as a step returns it and as the record keeps it."""

    name: str
    status: StepStatus
    detail: str = ""
    at: str = Field(default_factory=lambda: iso8601(utcnow()))

    @classmethod
    def done(cls, name: str, detail: str = "") -> StepRecord:
        return cls(name=name, status=StepStatus.DONE, detail=detail)

    @classmethod
    def already(cls, name: str, detail: str = "") -> StepRecord:
        return cls(name=name, status=StepStatus.ALREADY, detail=detail)

    @classmethod
    def skipped(cls, name: str, detail: str = "") -> StepRecord:
        return cls(name=name, status=StepStatus.SKIPPED, detail=detail)

    @classmethod
    def failed(cls, name: str, detail: str = "") -> StepRecord:
        return cls(name=name, status=StepStatus.FAILED, detail=detail)

    @classmethod
    def would(cls, name: str, detail: str = "") -> StepRecord:
        return cls(name=name, status=StepStatus.WOULD, detail=detail)

    @classmethod
    def unverified(cls, name: str, detail: str = "") -> StepRecord:
        return cls(name=name, status=StepStatus.UNVERIFIED, detail=detail)


class NetworkInterfaceState(Model):
    id: str
    security_group_ids: list[str]
    #: The interface's VPC, for the steps; not kept in the record (the record's `vpc_id` is the
    #: instance's).
    vpc_id: str | None = Field(default=None, exclude=True)


class TargetGroupTarget(Model):
    """A registration of the instance in an ELBv2 target group, as DescribeTargetHealth showed it."""

    arn: str
    #: The instance id, or an IPv4/IPv6 address of one of its interfaces (`ip` target groups).
    id: str
    port: int | None = None
    availability_zone: str | None = None


class VolumeState(Model):
    id: str
    delete_on_termination: bool


class PriorState(Model):
    """The instance as its episode's first attempt found it: what a release puts back.

    The first attempt writes what DescribeInstances shows before the first change; each later field is
    written by the step that reads it, before that step changes anything. A field is None until then.
    """

    vpc_id: str
    network_interfaces: list[NetworkInterfaceState]
    instance_profile_arn: str | None = None
    #: The role of `instance_profile_arn`.
    role_name: str | None = None
    autoscaling_group: str | None = None
    target_groups: list[TargetGroupTarget] | None = None
    #: Classic load balancer names.
    load_balancers: list[str] | None = None
    volumes: list[VolumeState] | None = None
    shutdown_behavior: Literal["stop", "terminate"] | None = None
    termination_protection: bool | None = None
    stop_protection: bool | None = None

    @property
    def vpc_ids(self) -> list[str]:
        """Every VPC the instance has an interface in (ENIs of several VPCs are possible), in order."""
        return list(dict.fromkeys(self.vpc_of(i) for i in self.network_interfaces))

    def vpc_of(self, interface: NetworkInterfaceState) -> str:
        return interface.vpc_id or self.vpc_id


class Snapshot(Model):
    volume_id: str
    snapshot_id: str


class Evidence(Model):
    """What the episode keeps: one crash-consistent snapshot per EBS volume ([] when snapshots are off)."""

    snapshots: list[Snapshot] = Field(default_factory=list)


#: The error of a tamper repair past the instance's repair budget: its network cut repaired, nothing else.
TAMPER_LOOP = "TamperLoop"


class ErrorInfo(Model):
    code: str
    message: str


class ReleaseRequest(Model):
    """Body of `POST /isolations/{isolation_id}/release` (optional). Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reason: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="Why the isolation is being undone (free text)"
    )
    requested_by: Annotated[str, Field(max_length=256)] | None = Field(
        default=None,
        description="Who asks (free text); deployed, the caller's authenticated IAM ARN replaces it",
    )


class ReleaseInfo(Model):
    """The release of an isolation, as the record keeps it: who asked, why, when, and each release step."""

    requested_by: str | None = None
    reason: str | None = None
    requested_at: str
    steps: list[StepRecord] = Field(default_factory=list)
    error: ErrorInfo | None = None


class IsolationRecord(Model):
    """The isolation record, as stored and as served (docs/record.md). A message on the queue is parsed
    into one too: the record as the message describes it, QUEUED."""

    isolation_id: str
    status: Status
    source: Source
    #: A dry run: checks every step, changes nothing, takes no instance slot (`shared.lifecycle.CHECK`).
    dry_run: bool = False
    #: The isolation of the same episode whose `prior_state` (and evidence) this one carries.
    inherits_from: str | None = None
    instance_id: str
    account_id: str
    region: str
    reason: str | None = None
    requested_by: str | None = None
    trigger: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    updated_at: str
    contained_at: str | None = None
    attempts: int = 0
    steps: list[StepRecord] = Field(default_factory=list)
    prior_state: PriorState | None = None
    evidence: Evidence | None = None
    error: ErrorInfo | None = None
    #: The isolation group used in each VPC (VPC id -> group id), written with `contained_at`.
    isolation_groups: dict[str, str] | None = None
    #: When a release put the instance back (RELEASED; for an earlier record of the episode, when the
    #: releasing record did).
    released_at: str | None = None
    #: On an earlier record of a released episode: the record whose release ended it.
    released_by: str | None = None
    #: The latest release of this isolation (RELEASING, RELEASED, RELEASE_FAILED).
    release: ReleaseInfo | None = None
    #: Stored, never served: the steps each attempt planned changes for (appended: a step two attempts
    #: planned is named twice), written with the prior values of their phase before the first of its
    #: changes (`worker.steps.base.StepContext.note_plans`). A retry that finds such a step's change in
    #: place, with no outcome on record, records it `done`.
    planned: tuple[str, ...] = Field(default=(), exclude=True)

    @property
    def target(self) -> Target:
        return Target(account_id=self.account_id, region=self.region, instance_id=self.instance_id)

    @property
    def watched(self) -> bool:
        """The instance is among those isolated now, which the tamper watch keeps isolated: the record is
        ISOLATED, in flight (its network cut may be in place already), or FAILED `TamperLoop` (its network
        cut was repaired, nothing else: the cut is still repaired)."""
        if self.status in (Status.ISOLATED, Status.QUEUED, Status.IN_PROGRESS):
            return True
        return (
            self.status is Status.FAILED
            and self.error is not None
            and self.error.code == TAMPER_LOOP
            and self.contained_at is not None
        )

    @property
    def started_by_trigger(self) -> bool:
        """Started by an event rather than a person (exemptions and coalescing apply)."""
        return self.source is not Source.WEBHOOK

    @classmethod
    def queued(
        cls,
        *,
        isolation_id: str,
        source: Source,
        target: Target,
        reason: str | None = None,
        requested_by: str | None = None,
        trigger: dict[str, Any] | None = None,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> IsolationRecord:
        stamp = iso8601(now or utcnow())
        return cls(
            isolation_id=isolation_id,
            status=Status.QUEUED,
            source=source,
            dry_run=dry_run,
            instance_id=target.instance_id,
            account_id=target.account_id,
            region=target.region,
            reason=reason,
            requested_by=requested_by,
            trigger=trigger or {},
            created_at=stamp,
            updated_at=stamp,
        )


class WebhookMessage(Model):
    """What ingest puts on the queue for a webhook request: the record already exists (QUEUED)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["webhook"] = "webhook"
    isolation_id: Annotated[str, StringConstraints(pattern=ISOLATION_ID_PATTERN)]
    request: IsolationRequest


class ReleaseMessage(Model):
    """What ingest puts on the queue for a release: the record (RELEASING) says the rest."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["release"] = "release"
    isolation_id: Annotated[str, StringConstraints(pattern=ISOLATION_ID_PATTERN)]
    #: The release request this message carries out (the record's `release.requested_at`).
    requested_at: str


class FollowUpMessage(Model):
    """What the containment puts on the follow-up queue: the isolation whose follow-up phase is due (its
    record holds everything else)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["follow-up"] = "follow-up"
    isolation_id: Annotated[str, StringConstraints(pattern=ISOLATION_ID_PATTERN)]
    source: Source
    account_id: AccountId
    region: Region
    instance_id: InstanceId

    @classmethod
    def of(cls, record: IsolationRecord) -> FollowUpMessage:
        return cls(
            isolation_id=record.isolation_id,
            source=record.source,
            account_id=record.account_id,
            region=record.region,
            instance_id=record.instance_id,
        )

    @property
    def target(self) -> Target:
        return Target(account_id=self.account_id, region=self.region, instance_id=self.instance_id)


class Accepted(Model):
    """Answer of `POST /isolate` (202, or 200 with `deduplicated`)."""

    isolation_id: str
    status: Status
    status_url: str
    deduplicated: bool | None = None

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
