"""`make bench`: AWS calls and time to containment of an isolation on the local stack.

Runs the local stack in-process (embedded moto, demo organization), then isolates two 2-ENI demo
instances of the same VPC and account through the webhook, one after the other: the first is the cold
path (no assumed-role session, no isolation security group yet), the second the warm path (both
cached). Every AWS call the project's clients make is counted through `shared.aws.add_event_hook`:

- webhook: the calls during one ingest handler invocation (`POST /isolate` over HTTP);
- isolation: the calls during the worker's handling of the message, and among them those before
  containment (up to the last ModifyNetworkInterfaceAttribute: then every interface has the isolation
  group and `contained_at` is written);
- time to containment: the record's `contained_at` minus the worker's start, and minus `created_at`.

The event source's own SQS calls (receive, delete) are the Lambda service's, not the function's, and
are not counted. Figures are moto's; real AWS adds its latencies but not calls.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from local_stack.stack import LocalStack

CONTAINMENT_CALL = "ec2.ModifyNetworkInterfaceAttribute"


@dataclass
class Calls:
    """AWS calls seen by the hook while recording."""

    names: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    recording: bool = False

    def hook(self, event_name: str = "", **_: Any) -> None:
        if self.recording:
            _event, service, operation = event_name.split(".", 2)
            with self._lock:
                self.names.append(f"{service}.{operation}")

    def start(self) -> None:
        with self._lock:
            self.names = []
        self.recording = True

    def stop(self) -> list[str]:
        self.recording = False
        with self._lock:
            return list(self.names)


@dataclass
class Isolation:
    label: str
    calls: list[str]
    worker_start: float
    record: dict[str, Any]

    @property
    def before_containment(self) -> list[str]:
        last = max(i for i, name in enumerate(self.calls) if name == CONTAINMENT_CALL)
        return self.calls[: last + 1]

    def seconds(self, start: str | float) -> float:
        contained = _timestamp(self.record["contained_at"])
        return contained - (start if isinstance(start, float) else _timestamp(start))


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _compact(names: list[str]) -> str:
    """`a, b x2, c` in call order, repeats of the same call folded."""
    out: list[str] = []
    counts: list[int] = []
    for name in names:
        if out and out[-1] == name:
            counts[-1] += 1
        else:
            out.append(name)
            counts.append(1)
    return ", ".join(
        f"{name} x{count}" if count > 1 else name for name, count in zip(out, counts, strict=True)
    )


def _by_service(names: list[str]) -> str:
    counts = Counter(name.split(".", 1)[0] for name in names)
    return ", ".join(f"{service} {count}" for service, count in sorted(counts.items()))


def isolate(stack: LocalStack, calls: Calls, label: str) -> tuple[list[str], Isolation]:
    assert stack.demo is not None, "the bench seeds the demo organization"
    instance = stack.demo.instance(label, account=0)
    assert len(instance.eni_ids) == 2, instance

    calls.start()
    status, body = stack.request(
        "POST",
        "/isolate",
        {"instance_id": instance.instance_id, "account_id": instance.account_id, "region": instance.region},
    )
    webhook_calls = calls.stop()
    if status != 202:
        raise SystemExit(f"POST /isolate answered {status}: {body}")

    source = stack.event_source
    assert source is not None
    sqs = stack.client("sqs")
    messages = source.receive(sqs, wait_seconds=5)
    if len(messages) != 1:
        raise SystemExit(f"expected the one queued message, got {len(messages)}")
    started: list[float] = []
    handler = source.handler

    def timed(event: dict[str, Any], context: Any) -> Any:
        started.append(time.time())
        calls.start()
        try:
            return handler(event, context)
        finally:
            calls.recording = False

    source.handler = timed
    try:
        outcome = source.process(sqs, messages)
    finally:
        source.handler = handler
    worker_calls = calls.stop()
    record = stack.wait_for(body["isolation_id"], timeout=10)
    if outcome.failed or record["status"] != "ISOLATED":
        raise SystemExit(f"isolation of {label} did not succeed: {record}")
    return webhook_calls, Isolation(label, worker_calls, started[0], record)


def main() -> int:
    from shared.aws import add_event_hook

    environment = {"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true"}
    calls = Calls()
    remove = add_event_hook("before-call", calls.hook)
    try:
        with LocalStack(seed_demo=True, worker=False, environment=environment) as stack:
            webhook_calls, cold = isolate(stack, calls, "web-1")
            _, warm = isolate(stack, calls, "web-2")
    finally:
        remove()

    rows = [
        (
            "AWS calls before containment",
            str(len(cold.before_containment)),
            str(len(warm.before_containment)),
        ),
        ("  by service", _by_service(cold.before_containment), _by_service(warm.before_containment)),
        ("AWS calls of the whole isolation", str(len(cold.calls)), str(len(warm.calls))),
        (
            "time to containment (worker start → contained_at)",
            f"{cold.seconds(cold.worker_start) * 1000:.0f} ms",
            f"{warm.seconds(warm.worker_start) * 1000:.0f} ms",
        ),
        (
            "time to containment (created_at → contained_at)",
            f"{cold.seconds(cold.record['created_at']) * 1000:.0f} ms",
            f"{warm.seconds(warm.record['created_at']) * 1000:.0f} ms",
        ),
    ]
    header = ("", "cold (1st isolation)", "warm (2nd, same VPC)")
    width = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    print("ec2-isolation benchmark: local stack (embedded moto), 2-ENI instances, same VPC and account")
    print()
    print(f"webhook request path (POST /isolate): {len(webhook_calls)} AWS calls: {_compact(webhook_calls)}")
    print()
    print("| " + " | ".join(cell.ljust(w) for cell, w in zip(header, width, strict=True)) + " |")
    print(f"|{'-' * (width[0] + 2)}|{'-' * (width[1] + 2)}|{'-' * (width[2] + 2)}|")
    for name, first, second in rows:
        print(f"| {name:<{width[0]}} | {first:<{width[1]}} | {second:<{width[2]}} |")
    print()
    for kind, isolation in (("cold", cold), ("warm", warm)):
        print(f"{kind} before containment: {_compact(isolation.before_containment)}")
        print(f"{kind} after containment:  {_compact(isolation.calls[len(isolation.before_containment) :])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
