"""The step catalogue's shape: each step is a small class with a registered name, the IAM actions it
needs and one `run` that checks before it acts, so a redelivered message is harmless."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.aws import AccountSession
from shared.config import WorkerSettings
from shared.models import Source, StepRecord, StepStatus, Target, iso8601, utcnow
from worker.instance import InstanceFacts


@dataclass
class StepContext:
    """What a step may use: the target account's clients, the instance as described, settings."""

    isolation_id: str
    source: Source
    target: Target
    facts: InstanceFacts
    account: AccountSession
    settings: WorkerSettings
    #: None: `worker.consistency.pause`.
    sleep: Callable[[float], None] | None = None
    #: Filled by ensure-isolation-sg: the isolation security group of each VPC.
    isolation_groups: dict[str, str] = field(default_factory=dict)

    @property
    def ec2(self) -> Any:
        return self.account.client("ec2")

    @property
    def iam(self) -> Any:
        return self.account.client("iam")


@dataclass(frozen=True)
class StepOutcome:
    name: str
    status: StepStatus
    detail: str = ""

    @classmethod
    def done(cls, name: str, detail: str = "") -> StepOutcome:
        return cls(name, StepStatus.DONE, detail)

    @classmethod
    def already(cls, name: str, detail: str = "") -> StepOutcome:
        return cls(name, StepStatus.ALREADY, detail)

    @classmethod
    def skipped(cls, name: str, detail: str = "") -> StepOutcome:
        return cls(name, StepStatus.SKIPPED, detail)

    @classmethod
    def failed(cls, name: str, detail: str = "") -> StepOutcome:
        return cls(name, StepStatus.FAILED, detail)

    def record(self) -> StepRecord:
        return StepRecord(name=self.name, status=self.status, detail=self.detail, at=iso8601(utcnow()))


class Step(ABC):
    name: ClassVar[str]
    permissions: ClassVar[tuple[str, ...]]
    #: True for the step after which the network cut is in place (`contained_at` is set with it).
    contains: ClassVar[bool] = False

    @abstractmethod
    def run(self, ctx: StepContext) -> StepOutcome: ...


CATALOGUE: list[type[Step]] = []


def register(step: type[Step]) -> type[Step]:
    if any(existing.name == step.name for existing in CATALOGUE):
        raise ValueError(f"step {step.name!r} registered twice")
    CATALOGUE.append(step)
    return step
