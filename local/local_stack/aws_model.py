"""A rough model of AWS's own latency and throttling, for measuring the local stack (`make bench`).

moto answers in a millisecond or two; AWS does not. Installed in an execution environment (they are
`Setup`s of `local_stack.environments`) or in this process, these add to every call the project's
clients make (`shared.aws` hooks, before the call is sent):

- `Latency`: a delay per call by service (STS and IAM ~100 ms, EC2 ~70 ms, DynamoDB ~8 ms, SQS
  ~12 ms, anything else ~30 ms);
- `Throttling`: a share of EC2's mutating calls (not Describe/Get/List/Search) answer
  `RequestLimitExceeded` (HTTP 503), as EC2's per-account token buckets do when a burst empties them.
  The error is raised where botocore's own retries do not see it: it stands for a throttle that
  outlasted them, which the worker's retry (the message back on the queue) must handle. While the file
  `paused_by` names exists, nothing is throttled (the environments are processes: a file is what they
  all see at once).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from botocore.exceptions import ClientError

LATENCY_SECONDS: Mapping[str, float] = MappingProxyType(
    {"sts": 0.100, "iam": 0.100, "ec2": 0.070, "dynamodb": 0.008, "sqs": 0.012}
)
OTHER_SECONDS = 0.030
_NON_MUTATING = ("Describe", "Get", "List", "Search")


def _service_and_operation(event_name: str) -> tuple[str, str]:
    _event, service, operation = event_name.split(".", 2)
    return service, operation


@dataclass(frozen=True)
class Latency:
    seconds: Mapping[str, float] = field(default_factory=lambda: dict(LATENCY_SECONDS))
    other_seconds: float = OTHER_SECONDS

    def install(self) -> None:
        from shared.aws import add_event_hook

        add_event_hook("before-call", self)

    def __call__(self, event_name: str = "", **_: Any) -> None:
        service, _operation = _service_and_operation(event_name)
        time.sleep(self.seconds.get(service, self.other_seconds))


@dataclass(frozen=True)
class Throttling:
    share: float = 0.03
    seed: int = 20261129
    #: While this file exists, no call is throttled (None: always on).
    paused_by: str | None = None

    def install(self) -> None:
        from shared.aws import add_event_hook

        add_event_hook("before-call.ec2", self.hook())

    def hook(self) -> Callable[..., None]:
        """The `before-call.ec2` hook: this process's own draw of which calls are throttled."""
        chance = random.Random(self.seed * 100_003 + os.getpid())  # noqa: S311 - a model, not security

        def throttle(event_name: str = "", **_: Any) -> None:
            _service, operation = _service_and_operation(event_name)
            if operation.startswith(_NON_MUTATING) or chance.random() >= self.share:
                return
            if self.paused_by is not None and os.path.exists(self.paused_by):
                return
            raise ClientError(
                {
                    "Error": {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."},
                    "ResponseMetadata": {"HTTPStatusCode": 503},
                },
                operation,
            )

        return throttle
