"""Bounded waits for AWS eventual consistency (IAM propagation, a just-created security group).

Wait in-process with exponential backoff while the budget lasts; past it, hand the retry to the queue
(`RetryableError`) rather than hold the Lambda.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import ClientError

from shared.aws import error_code
from shared.errors import RetryableError

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 4.0


def pause(seconds: float) -> None:
    """The wait between two tries (tests replace it to record waits instead of sleeping)."""
    time.sleep(seconds)


def until_consistent(
    call: Callable[[], T],
    *,
    codes: frozenset[str],
    budget_seconds: float,
    sleep: Callable[[float], None] | None,
    what: str,
) -> T:
    """Run `call`; while it fails with one of `codes`, back off and try again within the budget."""
    waited = 0.0
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            return call()
        except ClientError as exc:
            code = error_code(exc)
            if code not in codes:
                raise
            if waited + delay > budget_seconds:
                raise RetryableError(
                    code,
                    f"{what}: still {code} after {waited:.1f}s (eventual consistency); retrying later",
                    wait="consistency",
                ) from exc
            (sleep or pause)(delay)
            waited += delay
            delay = min(delay * 2, MAX_DELAY_SECONDS)
