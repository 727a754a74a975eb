"""The step catalogue's shape: each step is a small class with a name, the IAM actions it needs and one
`run` that checks before it acts, so a redelivered message is harmless. A step returns its outcome as a
`StepRecord` (done, already, skipped) and raises on failure."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.aws import AccountSession
from shared.config import WorkerSettings
from shared.models import Source, StepRecord, Target
from worker.instance import Instance


@dataclass
class StepContext:
    """What a step may use: the target account's clients, the instance as described, settings."""

    isolation_id: str
    source: Source
    target: Target
    instance: Instance
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


class Step(ABC):
    #: kebab-case verb-noun: the name in the record, the logs and the metrics.
    name: ClassVar[str]
    #: The IAM actions `run` calls in the target account (the member role grants exactly their union).
    permissions: ClassVar[tuple[str, ...]]

    @abstractmethod
    def run(self, ctx: StepContext) -> StepRecord: ...
