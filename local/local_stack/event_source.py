"""The worker's trigger: what Lambda's SQS event source mapping does.

One `SqsEventSource` per mapping of the template (its queue, its function, its `BatchSize`, its
`ScalingConfig.MaximumConcurrency`). Each of its `concurrency` pollers long-polls the queue for up to
`batch_size` messages, invokes the function with the batch as a real SQS event in one of its execution
environments (`local_stack.environments`: at most `concurrency` of them, each its own process, so at
most `concurrency` invocations at once), deletes the messages the handler did not report in
`batchItemFailures`, and leaves the others: their visibility timeout (possibly changed by the worker)
decides when they come back, and the queue's redrive policy moves them to the dead-letter queue after
`maxReceiveCount` receives. As in Lambda:

- a handler that raises, exceeds its timeout, or answers with an `itemIdentifier` that is not in the
  batch fails the whole batch (nothing is deleted);
- an environment that dies in the middle of an invocation (`EnvironmentDied`: a killed process, a
  timeout) returns its whole batch, successes included, and is replaced by a new one.

Given a plain handler instead of a runtime, the source runs it in this process, one batch at a time
(`InProcess`): the mode for tests that inject faults in-process.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local_stack.environments import (
    EnvironmentDied,
    FunctionTimedOut,
    HandlerError,
    InProcess,
    Invocation,
    Runtime,
)
from local_stack.lambda_context import LambdaContext

log = logging.getLogger("local_stack.worker")

Handler = Callable[[dict[str, Any], Any], Any]

_RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
)


def _message_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Message attributes as Lambda writes them into SQS records (camelCase, binary as base64)."""

    def b64(value: Any) -> str:
        return base64.b64encode(value if isinstance(value, bytes) else str(value).encode()).decode()

    shaped = {}
    for name, value in attributes.items():
        shaped[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": b64(value["BinaryValue"]) if "BinaryValue" in value else None,
            "stringListValues": list(value.get("StringListValues", [])),
            "binaryListValues": [b64(item) for item in value.get("BinaryListValues", [])],
            "dataType": value.get("DataType", "String"),
        }
    return shaped


def sqs_record(message: dict[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    """One record of a Lambda SQS event, from one ReceiveMessage message."""
    received = message.get("Attributes", {})
    attributes = {name: received[name] for name in _RECORD_ATTRIBUTES if name in received}
    attributes.update({name: value for name, value in received.items() if name not in attributes})
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": attributes,
        "messageAttributes": _message_attributes(message.get("MessageAttributes", {})),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def batch_event(messages: list[dict[str, Any]], *, queue_arn: str, region: str) -> dict[str, Any]:
    """The SQS event Lambda invokes a function with, from one ReceiveMessage batch."""
    return {"Records": [sqs_record(message, queue_arn=queue_arn, region=region) for message in messages]}


def delete_successes(sqs: Any, queue_url: str, messages: list[dict[str, Any]], failed: set[str]) -> None:
    """Delete the messages of a batch that did not fail; the failed ones stay for their retry."""
    done = [message for message in messages if message["MessageId"] not in failed]
    if not done:
        return
    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)]
    answer = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
    for failure in answer.get("Failed", []):
        log.warning("could not delete a processed message: %s", failure)


def failed_ids(result: Any, message_ids: list[str]) -> set[str]:
    """The message ids to leave on the queue, from the handler's answer (Lambda's rules).

    A null or empty answer, or null/empty `batchItemFailures`: the whole batch succeeded. An answer
    that is not an object, or an `itemIdentifier` that is missing, empty or not in the batch: the
    whole batch failed.
    """
    if result is None:
        return set()
    if not isinstance(result, dict):
        return set(message_ids)
    failures = result.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return set(message_ids)
    failed: set[str] = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(item, str) or item not in message_ids:
            return set(message_ids)  # Lambda fails the whole batch on a malformed answer
        failed.add(item)
    return failed


@dataclass
class BatchOutcome:
    """What happened to one batch."""

    message_ids: list[str]
    failed: set[str]
    error: str | None = None
    started: float = 0.0
    duration: float = 0.0
    #: The invocation's answer and what it took (its AWS calls, its environment); None when it died.
    invocation: Invocation | None = None


@dataclass
class Stats:
    batches: int = 0
    messages: int = 0
    deleted: int = 0
    failed: int = 0
    handler_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: BatchOutcome) -> None:
        with self._lock:
            self.batches += 1
            self.messages += len(outcome.message_ids)
            self.failed += len(outcome.failed)
            self.deleted += len(outcome.message_ids) - len(outcome.failed)
            self.handler_errors += outcome.error is not None


class SqsEventSource:
    """Pollers of one queue, invoking a function with SQS batch events (`handler`: a runtime, or a
    callable run in this process)."""

    def __init__(
        self,
        *,
        sqs_factory: Callable[[], Any],
        handler: Handler | Runtime,
        queue_url: str,
        queue_arn: str,
        region: str,
        account_id: str,
        function_name: str = "ec2-isolation-worker",
        timeout_seconds: float = 60,
        memory_mb: int = 512,
        batch_size: int = 10,
        wait_seconds: int = 1,
        concurrency: int = 2,
    ) -> None:
        self._sqs_factory = sqs_factory
        self.runtime: Runtime = InProcess(handler) if callable(handler) else handler
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.region = region
        self.account_id = account_id
        self.function_name = function_name
        self.timeout_seconds = timeout_seconds
        self.memory_mb = memory_mb
        self.batch_size = max(1, min(int(batch_size), 10))  # ReceiveMessage returns at most 10
        self.wait_seconds = wait_seconds
        self.concurrency = max(1, int(concurrency))
        self.stats = Stats()
        #: Called with every batch's outcome (its invocation's result and AWS calls), from the poller.
        self.observers: list[Callable[[BatchOutcome], None]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._poll_forever, name=f"local-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def request_stop(self) -> None:
        """Stop polling once the current receive or batch ends, without waiting for it (`stop` waits)."""
        self._stop.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; a batch in progress finishes first (bounded by the function timeout). The
        environments stay (warm) until `close`."""
        self.request_stop()
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout_seconds + 5)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = []

    def close(self) -> None:
        """Stop polling and end the function's environments."""
        self.stop()
        self.runtime.close()

    # --- one batch ---

    def context(self) -> LambdaContext:
        return LambdaContext(
            function_name=self.function_name,
            timeout_seconds=self.timeout_seconds,
            region=self.region,
            account_id=self.account_id,
            memory_limit_in_mb=self.memory_mb,
        )

    def receive(self, sqs: Any, wait_seconds: int | None = None) -> list[dict[str, Any]]:
        answer = sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(answer.get("Messages", []))

    def process(self, sqs: Any, messages: list[dict[str, Any]]) -> BatchOutcome:
        """Invoke the function with one batch and settle it on the queue."""
        event = batch_event(messages, queue_arn=self.queue_arn, region=self.region)
        ids = [m["MessageId"] for m in messages]
        outcome = BatchOutcome(message_ids=ids, failed=set())
        context = self.context()
        outcome.started = time.time()
        try:
            outcome.invocation = self.runtime.invoke(event, context)
            outcome.failed = failed_ids(outcome.invocation.result, ids)
            if context.expired():
                outcome.error = f"function timed out after {self.timeout_seconds:g} s"
                outcome.failed = set(ids)
        except FunctionTimedOut:  # Lambda stops the invocation and discards its environment
            outcome.error = f"function timed out after {self.timeout_seconds:g} s"
            outcome.failed = set(ids)
        except HandlerError as exc:  # Lambda: the invocation failed, every message comes back
            log.warning(
                "worker handler failed (%s); the batch of %d returns to the queue",
                exc,
                len(ids),
                exc_info=exc.__cause__,  # in-process: the handler's traceback (a process logs its own)
            )
            outcome.error = str(exc)
            outcome.failed = set(ids)
        except EnvironmentDied as died:  # every message comes back after its visibility timeout
            log.warning("worker environment died (%s); the batch of %d returns to the queue", died, len(ids))
            outcome.error = f"environment died: {died}"
            outcome.failed = set(ids)
        outcome.duration = time.time() - outcome.started
        if outcome.error and "timed out" in outcome.error:
            log.warning("worker %s; the batch of %d returns to the queue", outcome.error, len(ids))
        delete_successes(sqs, self.queue_url, messages, outcome.failed)
        if outcome.failed:
            log.info("%d of %d messages left on the queue for a retry", len(outcome.failed), len(ids))
        self.stats.add(outcome)
        for observe in list(self.observers):
            observe(outcome)
        return outcome

    def poll_once(self, sqs: Any | None = None, wait_seconds: int | None = None) -> BatchOutcome | None:
        """Receive one batch and process it; None when the queue gave nothing."""
        sqs = sqs or self._sqs_factory()
        messages = self.receive(sqs, wait_seconds)
        return self.process(sqs, messages) if messages else None

    def _poll_forever(self) -> None:
        sqs = self._sqs_factory()
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self.poll_once(sqs)
                backoff = 0.0
            except Exception:  # the endpoint went away or hiccuped: back off, keep polling
                if self._stop.is_set():
                    break
                backoff = min(5.0, backoff * 2 or 0.2)
                log.warning("polling the queue failed; retrying in %.1f s", backoff, exc_info=True)
                self._stop.wait(backoff)
