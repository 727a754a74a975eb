"""Settings from the environment, in one place. Only this module reads `os.environ`.

A misconfigured deploy fails on the first invocation with a readable validation error.
In tests: set the environment, then call `ingest_settings.cache_clear()` / `worker_settings.cache_clear()`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated

from pydantic import BeforeValidator, ConfigDict, Field

from shared.models import REGION_PATTERN, Model


def _split_ids(value: object) -> object:
    if isinstance(value, str):
        return frozenset(part.strip() for part in value.split(",") if part.strip())
    return value


AccountAllowList = Annotated[
    frozenset[Annotated[str, Field(pattern=r"^[0-9]{12}$")]], BeforeValidator(_split_ids)
]
RegionList = Annotated[frozenset[Annotated[str, Field(pattern=REGION_PATTERN)]], BeforeValidator(_split_ids)]
RoleArnList = Annotated[
    frozenset[Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")]],
    BeforeValidator(_split_ids),
]


class CommonSettings(Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: Annotated[str, Field(min_length=1)]
    #: Empty means any account.
    ALLOWED_ACCOUNT_IDS: AccountAllowList = frozenset()
    #: How long an isolation may hold an instance's "in flight" slot before a new request may take it
    #: over (a safety net: the worker releases the slot when the isolation ends).
    ACTIVE_LEASE_SECONDS: Annotated[int, Field(gt=0)] = 3600
    #: GuardDuty findings about the container of an EC2 host (resource type `Container`) isolate the host
    #: (the worker and the sweeper read queue messages alike).
    ISOLATE_CONTAINER_FINDINGS: bool = False
    #: The stack's event bus, where outcome events are published.
    EVENT_BUS_NAME: Annotated[str, Field(min_length=1)] = "ec2-isolation"
    #: Regions to admit beyond those botocore lists for the partition (comma-separated): for a region
    #: AWS opened after the deployed botocore was released (`shared.regions.known_region`).
    EXTRA_REGIONS: RegionList = frozenset()

    def account_allowed(self, account_id: str) -> bool:
        return not self.ALLOWED_ACCOUNT_IDS or account_id in self.ALLOWED_ACCOUNT_IDS


class IngestSettings(CommonSettings):
    QUEUE_URL: Annotated[str, Field(min_length=1)]
    #: The table of exemptions (`shared.store.exemptions`).
    EXEMPTION_TABLE_NAME: Annotated[str, Field(min_length=1)]
    IDEMPOTENCY_TTL_SECONDS: Annotated[int, Field(gt=0)] = 86400


class WorkerSettings(CommonSettings):
    QUEUE_URL: Annotated[str, Field(min_length=1)]
    #: Where the containment hands each isolation over to its follow-up phase.
    FOLLOW_UP_QUEUE_URL: Annotated[str, Field(min_length=1)]
    TARGET_ROLE_NAME: Annotated[str, Field(min_length=1)]
    #: The table of exemptions: a trigger for an instance with an active one there is SKIPPED.
    EXEMPTION_TABLE_NAME: Annotated[str, Field(min_length=1)]
    EXTERNAL_ID: str | None = None
    #: The queue's redrive maxReceiveCount: on that receive a retryable failure ends the record FAILED.
    MAX_RECEIVE_COUNT: Annotated[int, Field(ge=1)] = 5
    COALESCE_WINDOW_SECONDS: Annotated[int, Field(ge=0)] = 900
    #: The blast-radius budget: isolations each trigger source (not a person's webhook) may start per
    #: account and hour.
    MAX_AUTO_ISOLATIONS_PER_HOUR: Annotated[int, Field(ge=1)] = 50
    #: Tamper repairs per instance and hour; past it the repair ends FAILED `TamperLoop`.
    TAMPER_REPAIRS_PER_HOUR: Annotated[int, Field(ge=1)] = 3
    #: The tamper function's queue (its retries are scheduled there); empty in the isolation worker.
    TAMPER_QUEUE_URL: str = ""
    ISOLATION_SG_NAME: Annotated[str, Field(min_length=1)] = "ec2-isolation"
    ISOLATION_PROFILE_NAME: Annotated[str, Field(min_length=1)] = "ec2-isolation-deny-all"
    ISOLATION_ROLE_NAME: Annotated[str, Field(min_length=1)] = "ec2-isolation-deny-all"
    #: Upper bound of the in-process wait for IAM / EC2 eventual consistency before the retry is
    #: handed back to the queue.
    CONSISTENCY_WAIT_SECONDS: Annotated[float, Field(ge=0)] = 20.0
    #: Delay of the first retry through the queue; doubles per receive, capped at 900 s (SQS maximum).
    RETRY_BASE_DELAY_SECONDS: Annotated[int, Field(ge=0, le=900)] = 10
    #: Delay of a retry after the eventual-consistency budget ran out (IAM propagation takes seconds
    #: to tens of seconds).
    CONSISTENCY_RETRY_SECONDS: Annotated[int, Field(ge=0, le=900)] = 15
    #: Delay before a copy of a message whose isolation another worker runs looks again.
    IN_FLIGHT_RETRY_SECONDS: Annotated[int, Field(ge=0, le=900)] = 30
    #: Deny the instance's sessions on its prior role (the member role grants iam:PutRolePolicy only
    #: with its CutInstanceCredentials parameter on).
    CUT_INSTANCE_CREDENTIALS: bool = True
    #: Roles the worker never changes, beside the ones it always leaves alone (the member role denies
    #: writing them: its ProtectedRoleArns parameter).
    PROTECTED_ROLE_ARNS: RoleArnList = frozenset()
    #: One crash-consistent snapshot of the instance's EBS volumes per episode.
    SNAPSHOT_VOLUMES: bool = True
    #: Lock the snapshots in governance mode for this many days (0: no lock).
    SNAPSHOT_LOCK_DAYS: Annotated[int, Field(ge=0, le=36500)] = 0


class SweeperSettings(CommonSettings):
    DEAD_LETTER_QUEUE_URL: Annotated[str, Field(min_length=1)]
    #: The follow-up queue's DLQ: a follow-up message there whose record no attempt holds ends it too.
    FOLLOW_UP_DEAD_LETTER_QUEUE_URL: Annotated[str, Field(min_length=1)]
    #: The tamper queue's DLQ: a CloudTrail call there whose repair no attempt holds ends that repair.
    TAMPER_DEAD_LETTER_QUEUE_URL: Annotated[str, Field(min_length=1)]
    #: At most this many DLQ receives (of up to 10 messages each) per run.
    DLQ_PEEKS: Annotated[int, Field(ge=1, le=100)] = 10


class GuardrailSettings(CommonSettings):
    """The guardrail function (CloudTrail calls that could switch the service off) and the forwarding
    audit: the names of the service's member resources."""

    TARGET_ROLE_NAME: Annotated[str, Field(min_length=1)]
    ISOLATION_ROLE_NAME: Annotated[str, Field(min_length=1)] = "ec2-isolation-deny-all"
    ISOLATION_PROFILE_NAME: Annotated[str, Field(min_length=1)] = "ec2-isolation-deny-all"


class AuditSettings(GuardrailSettings):
    """The forwarding audit: what the member accounts' deployment must look like."""

    EXTERNAL_ID: str | None = None
    #: The stack's bus (its ARN names the stack's account and home region): the forwarding rules' target.
    EVENT_BUS_ARN: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:events:[a-z0-9-]+:[0-9]{12}:event-bus/.+$")]
    #: The only principal the execution role's trust policy names (iam-execution-role.yml WorkerRoleArn).
    WORKER_ROLE_ARN: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$")]
    #: The regions the member StackSet covers; empty: the stack's home region and us-east-1 (IAM's).
    AUDIT_REGIONS: RegionList = frozenset()
    #: The stack's own default-bus rules whose patterns the member's forwarding rules repeat (tag,
    #: tamper, guardrail): a forwarding rule whose pattern differs forwards something else.
    TAG_RULE_NAME: str | None = None
    TAMPER_RULE_NAME: str | None = None
    GUARDRAIL_RULE_NAME: str | None = None


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    if env.get("EXTERNAL_ID") == "":
        env.pop("EXTERNAL_ID")
    return env


@lru_cache
def ingest_settings() -> IngestSettings:
    return IngestSettings.model_validate(_environment())


@lru_cache
def worker_settings() -> WorkerSettings:
    return WorkerSettings.model_validate(_environment())


@lru_cache
def sweeper_settings() -> SweeperSettings:
    return SweeperSettings.model_validate(_environment())


@lru_cache
def guardrail_settings() -> GuardrailSettings:
    return GuardrailSettings.model_validate(_environment())


@lru_cache
def audit_settings() -> AuditSettings:
    return AuditSettings.model_validate(_environment())
