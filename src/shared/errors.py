"""Errors say what the caller should do, and this is the one place an AWS error becomes one of them.

- `RetryableError`: let it escape the worker's record handler; SQS redelivers the message.
- `PermanentError`: record the isolation FAILED and acknowledge the message. A
  `ContainmentIncomplete` does so only after every other step has run.
- `RequestNotFound`: a status lookup of an unknown id (404).

`classify(exc)` maps any exception onto the first two: throttling, 5xx, expired credentials, network
errors and every exception nobody expected (a bug, a parser error on an HTML answer) are retryable, so
they reach the last receive and end the record FAILED there rather than vanish; access errors and every
other AWS 4xx are permanent. `error_code(exc)` is the one way to read an AWS error's code.
"""

from __future__ import annotations

from botocore.exceptions import ClientError


class IsolationError(Exception):
    """Base of every domain error. `code` goes into the record's `error.code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RetryableError(IsolationError):
    """Transient: throttling, 5xx, timeouts, eventual consistency. Try again later."""

    def __init__(self, code: str, message: str, *, wait: str | None = None) -> None:
        super().__init__(code, message)
        #: Why to wait before the retry through the queue: "consistency" (AWS eventual consistency) or
        #: "in-flight" (another worker holds the isolation); None: the worker's exponential backoff.
        #: The worker's settings turn it into seconds.
        self.wait = wait


class PermanentError(IsolationError):
    """Trying again will not help: instance gone, access denied, account not allowed."""


class ContainmentIncomplete(PermanentError):
    """One part of the containment cannot be put in place (e.g. `CredentialsNotCut`), but the rest can:
    the worker records the step failed, runs every other step, and ends the record FAILED with this."""


class RequestNotFound(IsolationError):
    def __init__(self, isolation_id: str) -> None:
        super().__init__("NotFound", f"no isolation {isolation_id!r}")


THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
        "LimitExceededException",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "IDPCommunicationError",
        "EC2ThrottledException",
        "TransactionInProgressException",
        # EC2's limit of snapshots in progress per account: it clears as they complete.
        "ConcurrentSnapshotLimitExceeded",
    }
)
#: Credentials the target account no longer accepts: drop the cached session and retry.
EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def classify(exc: BaseException, *, permanent_code: str | None = None, context: str = "") -> IsolationError:
    """Map any exception onto what the worker should do with it.

    `permanent_code` replaces the AWS code of a permanent error with a domain code (e.g.
    `RoleNotAssumable`); the AWS code stays in the message. An `IsolationError` is returned as it is.
    """
    if isinstance(exc, IsolationError):
        return exc
    prefix = f"{context}: " if context else ""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"{prefix}{code}: {message}"
        if code in THROTTLING_CODES or code in TRANSIENT_CODES or code in EXPIRED_CODES or status >= 500:
            return RetryableError(code, text)
        return PermanentError(permanent_code or code, text)
    # Network errors, botocore's own errors and anything unexpected: retried, and on the message's last
    # receive recorded with their type and message.
    return RetryableError(type(exc).__name__, f"{prefix}{exc}")
