"""Bounded in-process retries: AWS eventual consistency (IAM propagation, a just-created security group)
and, on a message's last receive, the service's own table throttling the final write.

Wait in-process with exponential backoff while the budget lasts; past it, hand the retry to the queue
(`RetryableError`, saying what was still failing and why) rather than hold the Lambda.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import ClientError

from shared.errors import THROTTLING_CODES, TRANSIENT_CODES, RetryableError, error_code

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 4.0


def pause(seconds: float) -> None:
    """The wait between two tries (tests replace it to record waits instead of sleeping)."""
    time.sleep(seconds)


def retry_within(
    call: Callable[[], T],
    *,
    codes: frozenset[str],
    budget_seconds: float,
    sleep: Callable[[float], None] | None,
    what: str,
    cause: str,
    wait: str | None,
) -> T:
    """Run `call`; while it fails with one of `codes`, back off and try again within the budget. Past
    it, a `RetryableError` naming `what`, the code and the `cause`, with the queue's `wait`."""
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
                    code, f"{what}: still {code} after {waited:.1f}s ({cause}); retrying later", wait=wait
                ) from exc
            (sleep or pause)(delay)
            waited += delay
            delay = min(delay * 2, MAX_DELAY_SECONDS)


def retry_own_table(
    call: Callable[[], T], *, budget_seconds: float, sleep: Callable[[float], None] | None, what: str
) -> T:
    """`retry_within` for a write to the service's own table: while it is throttled (or fails
    transiently), back off within the budget; past it, a `RetryableError` the queue brings back at once."""
    return retry_within(
        call,
        codes=THROTTLING_CODES | TRANSIENT_CODES,
        budget_seconds=budget_seconds,
        sleep=sleep,
        what=what,
        cause="the service's own table",
        wait=None,
    )


def until_consistent(
    call: Callable[[], T],
    *,
    codes: frozenset[str],
    budget_seconds: float,
    sleep: Callable[[float], None] | None,
    what: str,
) -> T:
    """`retry_within` for AWS eventual consistency: past the budget, the queue retries after the
    settings' consistency delay."""
    return retry_within(
        call,
        codes=codes,
        budget_seconds=budget_seconds,
        sleep=sleep,
        what=what,
        cause="eventual consistency",
        wait="consistency",
    )
