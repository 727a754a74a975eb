"""`make bench`: AWS calls and time to containment on the local stack, one isolation alone and in bursts.

Runs the local stack in-process (embedded moto, a demo organization of three member accounts), with the
worker as Lambda runs it: batches of the template's `BatchSize`, at most `WorkerMaxConcurrency`
execution environments, each a process. Every environment (and the ingest) gets a rough model of AWS
(`local_stack.aws_model`): each call delayed as AWS would answer it (STS/IAM ~100 ms, EC2 ~70 ms,
DynamoDB ~8 ms, SQS ~12 ms) and, in the bursts, a share of EC2's mutating calls throttled
(`RequestLimitExceeded`, left to the worker's retry). Through the webhook, as a user sends them:

1. one 2-ENI instance alone, cold (the first isolation in its account and region: no assumed-role
   session, no isolation security group yet; the environment already started), then a second one of the
   same VPC, warm;
2. a burst of 20 2-ENI instances of one VPC, sent at once;
3. a burst of 100+ instances over three accounts, sent at once.

`--warm-environments`: every environment of the worker is started before the bursts (as after a recent
burst, or with provisioned concurrency), which separates the design's own figures from the local cost
of starting ten Python processes at once on a small machine (Lambda starts them in parallel, each on its
own CPU).

Reported: the webhook's own AWS calls; for the single isolations, the calls before containment (up to
the last ModifyNetworkInterfaceAttribute, or the last revocation of a new isolation group's default
rules, which runs beside the cuts: then every interface has the group, and the group no rule), in its
containment invocation, in its follow-up invocation, and from the webhook to the outcome event (the
webhook's, both invocations', the outcome event's) by service and operation; for
each burst, time to containment (`created_at` → `contained_at`) and to the end (→ the record's last
update) as p50/p95/max, against one alone, and the calls to the member accounts made before the last
network cut of the burst, with the follow-up calls among them (instance profile, instance attributes,
snapshots, tags), which compete with the cuts for the same EC2 request budget. Calls are counted in
each environment and come back with its batch's result. The event source's own SQS calls (receive,
delete) are the Lambda service's and are not counted.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local_stack.aws_model import LATENCY_SECONDS, Latency, Throttling
from local_stack.environments import Processes

# Only what is light at the top: every environment process imports this module again (multiprocessing's
# spawn), and what it imports would count in the environments' cold start.
if TYPE_CHECKING:
    from local_stack.event_source import BatchOutcome
    from local_stack.stack import LocalStack
    from local_stack.workloads import DemoInstance, InstanceSpec

#: The calls whose last one contains: the cuts, and the revocation of a new group's rules beside them.
CONTAINMENT_CALLS = frozenset(
    {
        "ec2.ModifyNetworkInterfaceAttribute",
        "ec2.RevokeSecurityGroupEgress",
        "ec2.RevokeSecurityGroupIngress",
    }
)
#: Calls of the follow-up steps: instance profile, instance attributes, snapshots, tags.
FOLLOW_UP_CALLS = frozenset(
    {
        "ec2.DescribeIamInstanceProfileAssociations",
        "ec2.AssociateIamInstanceProfile",
        "ec2.ReplaceIamInstanceProfileAssociation",
        "ec2.ModifyInstanceAttribute",
        "ec2.CreateSnapshots",
        "ec2.CreateTags",
    }
)
#: Services of the stack's own account; every other call goes to a member account.
OWN_ACCOUNT_SERVICES = frozenset({"sts", "dynamodb", "sqs", "eventbridge", "sns"})
FLEET_PER_ACCOUNT = 37
BURST_ONE_VPC = 20
#: A quarter of the fleet's instances have the demo application's instance profile (one role per
#: account, whose deny policy isolations update one at a time), the others none.
FLEET_WITH_PROFILE_EVERY = 4
THROTTLED_SHARE = 0.01
#: How long a burst may take to be contained, then to end (what has not ended by then is reported).
CONTAIN_SECONDS = 180.0
END_SECONDS = 60.0
TERMINAL = frozenset({"ISOLATED", "FAILED", "SKIPPED"})


@dataclass
class Calls:
    """AWS calls of this process (the ingest's) seen by the hook while recording."""

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
class Batches:
    """Every batch the worker's event source ran, with its calls (from the environments)."""

    outcomes: list[BatchOutcome] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, outcome: BatchOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def take(self) -> list[BatchOutcome]:
        with self._lock:
            taken, self.outcomes = self.outcomes, []
        return taken

    def settled(self, stack: LocalStack) -> list[BatchOutcome]:
        """The batches so far, once the queue is empty (every batch deleted, so observed)."""
        deadline = time.monotonic() + 30
        while stack.queue_depth() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)  # the last poller between its delete and its observers
        return self.take()


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


def _by_service_and_operation(names: list[str]) -> str:
    """`dynamodb 22 (UpdateItem 19, GetItem 2, TransactWriteItems 1), ec2 ...`: by service, then operation."""
    services = sorted({name.split(".", 1)[0] for name in names})
    return ", ".join(
        f"{service} {sum(n.startswith(service + '.') for n in names)} "
        f"({_by_operation([n for n in names if n.startswith(service + '.')])})"
        for service in services
    )


def _calls(outcomes: list[BatchOutcome]) -> list[tuple[float, str]]:
    return sorted(call for o in outcomes if o.invocation for call in o.invocation.calls or [])


def _before_last_cut(calls: list[tuple[float, str]]) -> list[str]:
    cuts = [at for at, name in calls if name in CONTAINMENT_CALLS]
    return [name for at, name in calls if cuts and at <= max(cuts)]


def _member_calls(names: list[str]) -> list[str]:
    return [name for name in names if name.split(".", 1)[0] not in OWN_ACCOUNT_SERVICES]


def _post(stack: LocalStack, instance: DemoInstance) -> str:
    body = {"instance_id": instance.instance_id, "account_id": instance.account_id, "region": instance.region}
    status, answer = stack.request("POST", "/isolate", body)
    if status != 202:
        raise SystemExit(f"POST /isolate answered {status}: {answer}")
    return str(answer["isolation_id"])


def _records(stack: LocalStack, isolation_ids: list[str], done: Any, seconds: float) -> list[dict[str, Any]]:
    """The records once each is `done`, or as they are when `seconds` have passed."""
    deadline = time.monotonic() + seconds
    records: dict[str, dict[str, Any]] = {}
    while True:
        for isolation_id in isolation_ids:
            if isolation_id not in records or not done(records[isolation_id]):
                status, record = stack.request("GET", f"/isolations/{isolation_id}")
                if status != 200:
                    raise SystemExit(f"GET /isolations/{isolation_id} answered {status}: {record}")
                records[isolation_id] = record
        if all(done(r) for r in records.values()) or time.monotonic() >= deadline:
            return [records[isolation_id] for isolation_id in isolation_ids]
        time.sleep(0.5)


def _settle(stack: LocalStack, isolation_ids: list[str]) -> list[dict[str, Any]]:
    """The records once contained, then once ended (or as they are by then); none may have failed."""
    contained = _records(
        stack, isolation_ids, lambda r: r["contained_at"] or r["status"] in TERMINAL, CONTAIN_SECONDS
    )
    records = _records(stack, isolation_ids, lambda r: r["status"] in TERMINAL, END_SECONDS)
    records = [
        {**r, "contained_at": r["contained_at"] or c["contained_at"]}
        for r, c in zip(records, contained, strict=True)
    ]
    failed = [r for r in records if r["status"] not in ("ISOLATED", "IN_PROGRESS", "QUEUED")]
    if failed:
        raise SystemExit(f"{len(failed)} isolations failed, e.g. {failed[0]}")
    return records


@dataclass
class Single:
    label: str
    record: dict[str, Any]
    calls: list[str]
    worker_start: float
    webhook_calls: list[str]
    #: The follow-up invocation's calls (its steps, the final write, the outcome event).
    follow_up_calls: list[str] = field(default_factory=list)

    @property
    def all_calls(self) -> list[str]:
        """Every AWS call from the webhook to the outcome event: the webhook's, the containment
        invocation's, the follow-up invocation's (which publishes the outcome)."""
        return [*self.webhook_calls, *self.calls, *self.follow_up_calls]

    @property
    def before_containment(self) -> list[str]:
        last = max(i for i, name in enumerate(self.calls) if name in CONTAINMENT_CALLS)
        return self.calls[: last + 1]

    def contained_after(self, start: str | float) -> float:
        contained = _timestamp(self.record["contained_at"])
        return contained - (start if isinstance(start, float) else _timestamp(start))


def isolate_one(
    stack: LocalStack, batches: Batches, follow_ups: Batches, instance: DemoInstance, calls: Calls
) -> Single:
    batches.take()
    follow_ups.take()
    calls.start()
    isolation_id = _post(stack, instance)
    webhook = calls.stop()
    record = _settle(stack, [isolation_id])[0]
    if record["status"] != "ISOLATED" or not record["contained_at"]:
        raise SystemExit(f"the isolation of {instance.label} did not end: {record}")
    outcomes = [o for o in batches.settled(stack) if o.invocation is not None]
    if len(outcomes) != 1:
        raise SystemExit(f"expected the isolation in one batch, got {len(outcomes)}")
    [outcome] = outcomes
    assert outcome.invocation is not None
    worker = [name for _, name in sorted(outcome.invocation.calls or [])]
    followed = [o for o in follow_ups.settled(stack) if o.invocation is not None]
    if len(followed) != 1:
        raise SystemExit(f"expected the follow-up in one batch, got {len(followed)}")
    follow_up = [name for _, name in sorted(followed[0].invocation.calls or [])]  # type: ignore[union-attr]
    return Single(instance.label, record, worker, outcome.started, webhook, follow_up)


@dataclass
class Burst:
    title: str
    records: list[dict[str, Any]]
    outcomes: list[BatchOutcome]
    seconds: float

    def to(self, field_name: str) -> list[float]:
        """Seconds from `created_at`, of the records that got there within the bench's time."""
        return sorted(
            _timestamp(r[field_name]) - _timestamp(r["created_at"])
            for r in self.records
            if r["contained_at"] and (field_name == "contained_at" or r["status"] == "ISOLATED")
        )

    @property
    def contained(self) -> int:
        return sum(bool(r["contained_at"]) for r in self.records)

    @property
    def ended(self) -> int:
        return sum(r["status"] == "ISOLATED" for r in self.records)

    @property
    def before_last_cut(self) -> list[str]:
        return _member_calls(_before_last_cut(_calls(self.outcomes)))

    @property
    def retried(self) -> int:
        return sum(int(r.get("attempts") or 1) > 1 for r in self.records)


def burst(stack: LocalStack, batches: Batches, title: str, instances: list[DemoInstance]) -> Burst:
    batches.take()
    _progress(f"{title} ...")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="bench-client") as clients:
        ids = list(clients.map(lambda instance: _post(stack, instance), instances))
    records = _settle(stack, ids)
    seconds = time.monotonic() - started
    return Burst(title, records, batches.settled(stack), seconds)


def _percentiles(values: list[float]) -> str:
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]
    return f"p50 {statistics.median(values):.2f} s, p95 {p95:.2f} s, max {max(values):.2f} s"


def _fleet_specs() -> tuple[InstanceSpec, ...]:
    from local_stack.workloads import INSTANCES, InstanceSpec

    fleet = (
        InstanceSpec(f"fleet-{i:02d}", "main", profile=i % FLEET_WITH_PROFILE_EVERY == 0)
        for i in range(FLEET_PER_ACCOUNT)
    )
    return (*INSTANCES, *fleet)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    warm_environments = "--warm-environments" in (sys.argv[1:] if argv is None else argv)
    from local_stack.organization import MEMBER_ACCOUNT_NAMES
    from local_stack.stack import LocalStack
    from shared.aws import add_event_hook
    from shared.observability import logger

    logger.setLevel("ERROR")  # the ingest's, in this process (each environment reads the variable)
    # The single isolations are measured without the throttling: a throttled one is retried through the
    # queue, and its figures are no longer those of one isolation's path (the bursts keep it).
    singles = Path(tempfile.mkdtemp(prefix="bench-")) / "singles-unthrottled"
    singles.touch()
    latency, throttling = Latency(), Throttling(share=THROTTLED_SHARE, paused_by=str(singles))
    environment = {"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true"}
    calls = Calls()
    remove = add_event_hook("before-call", calls.hook)
    began = time.monotonic()
    # Powertools prints the ingest's metric set on stdout (every 100 values) even with metrics disabled.
    quiet = contextlib.redirect_stdout(io.StringIO())
    try:
        with (
            quiet,
            LocalStack(
                seed_demo=True,
                environment=environment,
                demo_accounts=(*MEMBER_ACCOUNT_NAMES, "demo-workloads-c"),
                demo_instances=_fleet_specs(),
                setups=(latency, throttling),
                warm=0,
            ) as stack,
        ):
            assert stack.demo is not None and stack.event_source is not None
            latency.install()  # the ingest, in this process
            source = stack.event_source
            runtime = source.runtime
            assert isinstance(runtime, Processes)
            batches, follow_ups = Batches(), Batches()
            source.observers.append(batches)
            assert stack.follow_up_source is not None
            stack.follow_up_source.observers.append(follow_ups)
            runtime.warm(source.concurrency if warm_environments else 1)
            # Every other function's environment is started first (the follow-up's, the tamper watch's,
            # the sweeper's by its first run): on this small machine a process starting (its imports)
            # takes a core from the isolation measured beside it; in Lambda each has its own.
            for other in stack.event_sources.values():
                if other is not source and isinstance(other.runtime, Processes):
                    other.runtime.warm(1)
            for scheduled in stack.scheduled:
                scheduled.run_once()
            seeded = time.monotonic() - began
            _progress(f"stack started, demo organization seeded: {seeded:.0f} s")

            first, second = stack.demo.instance("web-1", account=0), stack.demo.instance("web-2", account=0)
            cold = isolate_one(stack, batches, follow_ups, first, calls)
            warm = isolate_one(stack, batches, follow_ups, second, calls)
            singles.unlink()
            _progress(f"one alone, cold and warm: {time.monotonic() - began:.0f} s")

            accounts = stack.demo.accounts
            one_vpc = [stack.demo.instance(f"fleet-{i:02d}", account=0) for i in range(BURST_ONE_VPC)]
            fleet = [
                stack.demo.instance(f"fleet-{i:02d}", account=0)
                for i in range(BURST_ONE_VPC, FLEET_PER_ACCOUNT)
            ]
            for index in range(1, len(accounts)):
                fleet += [
                    instance
                    for instance in accounts[index].instances
                    if not instance.exempt and instance.label not in ("exempt",)
                ]
            bursts = [
                burst(stack, batches, f"burst of {len(one_vpc)} 2-ENI instances of one VPC", one_vpc),
                burst(
                    stack,
                    batches,
                    f"burst of {len(fleet)} instances over {len(accounts)} accounts",
                    fleet,
                ),
            ]
            inits = runtime.init_seconds
    finally:
        remove()
    report(
        cold,
        warm,
        cold.webhook_calls,
        bursts,
        source.batch_size,
        source.concurrency,
        inits,
        seeded,
        warm_environments=warm_environments,
    )
    print(f"\nbench ran in {time.monotonic() - began:.0f} s")
    return 0


def report(
    cold: Single,
    warm: Single,
    webhook_calls: list[str],
    bursts: list[Burst],
    batch_size: int,
    concurrency: int,
    inits: list[float],
    seeded: float,
    *,
    warm_environments: bool = False,
) -> None:
    model = ", ".join(f"{service} {seconds * 1000:.0f} ms" for service, seconds in LATENCY_SECONDS.items())
    print(
        "ec2-isolation benchmark: local stack (embedded moto), 2-ENI instances; the worker in "
        f"environment processes (batch size {batch_size}, at most {concurrency} at once); "
        f"AWS latency model: {model} per call; {THROTTLED_SHARE:.0%} of EC2 mutating calls throttled"
        " (in the bursts; one alone is measured unthrottled)"
    )
    started = f"all {concurrency} started before the bursts" if warm_environments else "one started before"
    print(f"(stack started and demo organization seeded in {seeded:.0f} s; worker environments: {started})")
    print()
    print(f"webhook request path (POST /isolate): {len(webhook_calls)} AWS calls: {_compact(webhook_calls)}")
    print()
    rows = [
        (
            "AWS calls before containment",
            str(len(cold.before_containment)),
            str(len(warm.before_containment)),
        ),
        ("  by service", _by_service(cold.before_containment), _by_service(warm.before_containment)),
        ("AWS calls of its containment invocation", str(len(cold.calls)), str(len(warm.calls))),
        (
            "AWS calls of its follow-up invocation",
            str(len(cold.follow_up_calls)),
            str(len(warm.follow_up_calls)),
        ),
        ("AWS calls, webhook to outcome event", str(len(cold.all_calls)), str(len(warm.all_calls))),
        ("  by service", _by_service(cold.all_calls), _by_service(warm.all_calls)),
        (
            "time to containment (worker start → contained_at)",
            f"{cold.contained_after(cold.worker_start) * 1000:.0f} ms",
            f"{warm.contained_after(warm.worker_start) * 1000:.0f} ms",
        ),
        (
            "time to containment (created_at → contained_at)",
            f"{cold.contained_after(cold.record['created_at']) * 1000:.0f} ms",
            f"{warm.contained_after(warm.record['created_at']) * 1000:.0f} ms",
        ),
    ]
    header = ("one alone", "cold (1st in its account)", "warm (2nd, same VPC)")
    width = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    print("| " + " | ".join(cell.ljust(w) for cell, w in zip(header, width, strict=True)) + " |")
    print(f"|{'-' * (width[0] + 2)}|{'-' * (width[1] + 2)}|{'-' * (width[2] + 2)}|")
    for name, one, two in rows:
        print(f"| {name:<{width[0]}} | {one:<{width[1]}} | {two:<{width[2]}} |")
    print()
    for kind, single in (("cold", cold), ("warm", warm)):
        print(f"{kind} before containment: {_compact(single.before_containment)}")
        print(f"{kind} after containment:  {_compact(single.calls[len(single.before_containment) :])}")
        print(f"{kind} follow-up:          {_compact(single.follow_up_calls)}")
    print()
    print(
        f"one warm isolation, webhook to outcome event: {len(warm.all_calls)} AWS calls: "
        f"{_by_service_and_operation(warm.all_calls)}"
    )
    alone = warm.contained_after(warm.record["created_at"])
    for each in bursts:
        contained, finished = each.to("contained_at"), each.to("updated_at")
        before = each.before_last_cut
        follow_ups = [name for name in before if name in FOLLOW_UP_CALLS]
        all_member = _member_calls([name for _, name in _calls(each.outcomes)])
        print()
        print(f"{each.title}, sent at once through the webhook ({each.seconds:.1f} s):")
        late = len(each.records) - each.contained
        note = f"; {late} not contained within {CONTAIN_SECONDS:.0f} s" if late else ""
        print(
            f"  time to containment: {_percentiles(contained)}  "
            f"(max {max(contained) / alone:.0f}x one alone, warm{note})"
        )
        ended = f"{each.ended} of {len(each.records)} ended"
        if each.ended < len(each.records):
            ended += f" within {CONTAIN_SECONDS + END_SECONDS:.0f} s"
        print(f"  time to the end:     {_percentiles(finished) if finished else '-'}  ({ended})")
        print(
            f"  member-account calls before the last network cut: {len(before)} of {len(all_member)}, "
            f"follow-up calls among them: {len(follow_ups)} ({_by_operation(follow_ups)})"
        )
        print(
            f"  batches: {len(each.outcomes)} in {len({o.invocation.environment for o in each.outcomes if o.invocation})} "
            f"environments; isolations retried (throttled or waiting): {each.retried}"
        )
    print(
        f"\nenvironments started in all: {len(inits)}; their init (spawn, imports): "
        f"median {statistics.median(inits):.1f} s, max {max(inits):.1f} s (on this machine, while it is busy)"
    )


def _by_operation(names: list[str]) -> str:
    counts = Counter(name.split(".", 1)[1] for name in names)
    return ", ".join(f"{operation} {count}" for operation, count in counts.most_common()) or "none"


if __name__ == "__main__":
    raise SystemExit(main())
