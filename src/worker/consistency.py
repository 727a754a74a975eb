"""Bounded in-process waits: AWS eventual consistency (IAM propagation, a just-created security group),
on a message's last receive the service's own table throttling the final write, and another worker still
at something this one must wait for (a role's lease, a group's claim, a release stopping).

Wait in-process with exponential backoff while the budget lasts (one loop, `_backoff`); past it, hand the
retry to the queue (`RetryableError`, saying what was still failing and why) rather than hold the Lambda.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from botocore.exceptions import ClientError

from shared.errors import THROTTLING_CODES, TRANSIENT_CODES, RetryableError, error_code

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 4.0


def pause(seconds: float) -> None:
    """The wait between two tries (tests replace it to record waits instead of sleeping)."""
    time.sleep(seconds)


class WaitedOut(RetryableError):
    """`wait_for`'s budget ran out: another worker is still at it; the queue brings the message back."""


def wait_for(
    condition: Callable[[], bool],
    *,
    budget_seconds: float,
    first_delay: float,
    max_delay: float,
    sleep: Callable[[float], None] | None,
    code: str,
    message: str | Callable[[float], str],
    wait_first: bool = False,
) -> None:
    """Ask `condition` until it holds, backing off between asks while the budget lasts (`wait_first`:
    the first ask only after the first wait). Past it, `WaitedOut` with `code` and `message` (or
    `message(seconds waited)`), which the queue retries after its in-flight delay."""
    waited = 0.0
    for waited in _backoff(budget_seconds, first_delay, max_delay, sleep):
        if (waited or not wait_first) and condition():
            return
    raise WaitedOut(code, message(waited) if callable(message) else message, wait="in-flight")


def _backoff(
    budget_seconds: float, first_delay: float, max_delay: float, sleep: Callable[[float], None] | None
) -> Iterator[float]:
    """The one wait loop: yields before every try (the seconds waited so far); between two tries waits,
    each wait twice the one before (at most `max_delay`); stops when the next wait would pass the budget."""
    waited, delay = 0.0, first_delay
    while True:
        yield waited
        if waited + delay > budget_seconds:
            return
        (sleep or pause)(delay)
        waited += delay
        delay = min(delay * 2, max_delay)


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
    failed: tuple[ClientError, float] | None = None
    for waited in _backoff(budget_seconds, FIRST_DELAY_SECONDS, MAX_DELAY_SECONDS, sleep):
        try:
            return call()
        except ClientError as exc:
            if error_code(exc) not in codes:
                raise
            failed = exc, waited
    assert failed is not None
    error, waited = failed
    code = error_code(error)
    raise RetryableError(
        code, f"{what}: still {code} after {waited:.1f}s ({cause}); retrying later", wait=wait
    ) from error


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
