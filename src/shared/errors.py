"""Errors say what the caller should do.

- `RetryableError`: let it escape the worker's record handler; SQS redelivers the message.
- `PermanentError`: record the isolation FAILED and acknowledge the message.
- `RequestNotFound`: a status lookup of an unknown id (404).

`shared.aws.classify` is the one place that maps AWS error codes onto these.
"""

from __future__ import annotations


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


class RequestNotFound(IsolationError):
    def __init__(self, isolation_id: str) -> None:
        super().__init__("NotFound", f"no isolation {isolation_id!r}")
