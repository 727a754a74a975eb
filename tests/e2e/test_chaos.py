"""Chaos: hundreds of isolations over three member accounts through the local stack, with AWS faults and
worker crashes injected at random (seeded) on the worker's calls. Whatever the interleaving, every request
must end in a state a responder can trust:

- every request ends ISOLATED, FAILED or SKIPPED (a request that joined another isolation ends as that
  one does), or its message is in the DLQ and its record ended (FAILED, or ISOLATED before a batch-mate's
  crash brought its message back); nothing is QUEUED or IN_PROGRESS, and no
  instance's in-flight slot is still taken;
- an instance with an ISOLATED record is isolated as docs/record.md's steps say; on every instance, what is in place
  is what its records say was done (no half-isolated instance without a record saying which steps ran);
  exempt, terminated and never-requested instances are untouched; an isolated instance's role denies its
  sessions (when it had one), it cannot stop or lose its volumes, and each of its volumes has a snapshot;
- one isolation security group per VPC (the one the service's table names), with no rules and its managed
  tag;
- an adversary: a member with ordinary EC2 rights works against the service all along (`Adversary`): it
  makes look-alike isolation groups before the first request, forges record pointers and exemptions in
  instance tags, and reopens the service's isolation groups (untags them, then opens their egress); each of
  its calls reaches the bus as CloudTrail delivers it. Whatever it did, every instance whose record reads
  ISOLATED is isolated in fact, no look-alike group is ever used, and an isolated instance's tags are its
  own isolation's;
- releases: a share of the isolated instances is released while the run goes on (each once its own
  requests have ended; a few then get a GuardDuty finding, which must isolate them again, never coalesce
  with the released isolation). Releases meet the same faults (never a crash); a release that ends
  RELEASE_FAILED is asked again once the faults are off, as a responder would. Every released instance
  whose latest record is the RELEASED one looks as it did before its isolation
  (`local_stack.isolation_check.release_problems`); on one isolated again, what is in place is what the
  records since its release say; every earlier record of a released episode reads RELEASED too (none
  still ISOLATED, FAILED with a prior state, or RELEASE_FAILED).

How the faults get in: one botocore hook (`shared.aws.add_event_hook`) on every client the project builds,
at `before-parameter-build`, which fails a call with the real AWS error code and HTTP status before it is
sent (botocore's own retries never see it: it is the error that survived them). It injects only while the
worker works for an isolation (a context variable set around `worker.runner._Receive.acting`, the
context of each phase of each isolation, containment or follow-up), so ingest's calls and
the test's own checks (plain boto3 clients) never get a fault. A crash may come on any receive, the last
one included: its message goes on to the DLQ, and once its lease has expired the sweeper ends its record
FAILED (`WorkerLost`, or `DeadLettered` when it died before its first write); the checks read every
record through the API first, as a responder would.

Two knobs make the local run fast (both put back after the test):
- `worker.receive.LEASE_SECONDS` (120 s, the release's too) becomes LEASE_SECONDS: the lease a crashed attempt leaves on its
  record. 8 s keeps the deployed relation: a lease outlasts a message's remaining retries (locally
  1 + 2 + 2 + 2 s of retry delays, deployed 10 + 30 + 30 + 30 s);
- the queues' visibility timeout (360 s in template.yaml) becomes VISIBILITY_TIMEOUT_SECONDS, longer than
  the lease plus the time a message can wait in its batch before its attempt begins, as deployed (60 s
  worker timeout + 120 s lease < 360 s): a crashed message comes back once its lease has expired.

The violations found are listed all at once, after the figures. Figures and violations go to the end of
the run (`figures` fixture); `-s` also prints them as they come:
`.venv/bin/python -m pytest tests/e2e/test_chaos.py -q -s -p no:randomly`.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from local_stack.event_source import EnvironmentDied
from local_stack.isolation_check import DENY_ALL, observed_state, release_problems
from local_stack.organization import MEMBER_ACCOUNT_NAMES
from local_stack.sample_events import cloudtrail_call, guardduty_finding, tag_change
from local_stack.stack import LocalStack
from local_stack.workloads import INSTANCES, DemoInstance, InstanceSpec
from tests.e2e.helpers import DENY_POLICY, instance_clients, load_balanced, member_clients

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(720)]

SEED = 20240611
#: How long the run may take to settle once every request is in.
SETTLE_SECONDS = 240.0
LEASE_SECONDS = 8
VISIBILITY_TIMEOUT_SECONDS = 30
TERMINAL = frozenset({"ISOLATED", "FAILED", "SKIPPED", "RELEASED", "RELEASE_FAILED"})
#: Instances released while the run goes on (a seeded choice of the normal ones, never two of one Auto
#: Scaling group: each release takes a place in the group, whose MaxSize leaves two), and how many of them
#: then get a GuardDuty finding (it isolates them again).
RELEASES = 12
RETRIGGERED = 3
ACCOUNT_NAMES = (*MEMBER_ACCOUNT_NAMES, "demo-workloads-c")
#: AssumeRole calls into the third account that fail with AccessDenied: a window (the role not deployed
#: there yet). A failed AssumeRole caches nothing, so these are that account's first isolations.
ACCESS_DENIED_WINDOW = 3
STEPS = (
    "ensure-isolation-sg",
    "swap-security-groups",
    "swap-instance-profile",
    "enable-termination-protection",
    "tag-instance",
)
SOURCES = ("webhook", "guardduty", "tag")
#: The error of a request for an instance that cannot be isolated.
EXPECTED_FAILURE = {"missing": "InstanceNotFound", "terminated": "InstanceTerminated"}
TITLE = "chaos: isolations through the local stack, faults injected at random (seeded)"


def _chaos_specs() -> tuple[InstanceSpec, ...]:
    """The demo's 7 instances and 20 more per account: both VPCs, some without a profile, two more in the
    account's Auto Scaling group behind its load balancers, one more exempt, one terminated before the
    run."""
    specs = [
        InstanceSpec(f"chaos-{index:02d}", "ipv6" if index % 3 == 0 else "main", profile=index % 4 != 1)
        for index in range(16)
    ]
    specs += [InstanceSpec(f"chaos-asg-{index}", "main", scaled=True) for index in range(2)]
    specs.append(InstanceSpec("chaos-exempt", "ipv6", exempt=True))
    specs.append(InstanceSpec("chaos-terminated", "main"))
    return (*INSTANCES, *specs)


SPECS = _chaos_specs()


class WorkerCrash(EnvironmentDied):
    """The worker dies in the middle of an isolation (out of memory, timeout, the host going away).

    Raised from a hook, nothing of the worker runs after it (no `except Exception` catches it): the
    record stays as the last write left it, the local event source treats the invocation as dead (the
    whole batch comes back after the queue's visibility timeout, as after a real crash) and goes on
    polling. The call it is raised on never happens.
    """


# --- the faults ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    code: str
    status: int

    def error(self, operation: str) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": self.code, "Message": f"injected by the chaos test ({operation})"},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            },
            operation,
        )


THROTTLED_EC2 = Fault("RequestLimitExceeded", 503)
THROTTLED = Fault("Throttling", 400)
INTERNAL = Fault("InternalError", 500)
IAM_PROPAGATION = Fault("InvalidParameterValue", 400)
NOT_YET_VISIBLE = Fault("InvalidGroup.NotFound", 400)
TABLE_THROTTLED = Fault("ProvisionedThroughputExceededException", 400)
EXPIRED = Fault("ExpiredToken", 400)
ACCESS_DENIED = Fault("AccessDenied", 403)
UNAUTHORIZED = Fault("UnauthorizedOperation", 403)

#: (call, fault, probability per call) on the worker's calls; the first that fires wins. `dynamodb.slot`
#: is an UpdateItem of an instance's in-flight slot, `dynamodb.record` one of an isolation record;
#: `dynamodb.TransactWriteItems` is a record's end with its slot's release (or a trigger's new record).
RULES: tuple[tuple[str, Fault, float], ...] = (
    ("ec2.ReplaceIamInstanceProfileAssociation", IAM_PROPAGATION, 0.25),
    ("ec2.AssociateIamInstanceProfile", IAM_PROPAGATION, 0.25),
    ("ec2.ModifyNetworkInterfaceAttribute", NOT_YET_VISIBLE, 0.04),
    ("ec2.RevokeSecurityGroupEgress", NOT_YET_VISIBLE, 0.5),
    ("ec2.DescribeInstances", EXPIRED, 0.015),
    # An isolation modifies four instance attributes and makes five or six IAM calls: per call, these
    # rates fail about as many isolations as one attribute and the occasional IAM call did before.
    ("ec2.ModifyInstanceAttribute", UNAUTHORIZED, 0.01),
    ("ec2.*", THROTTLED_EC2, 0.025),
    ("ec2.*", INTERNAL, 0.012),
    ("sts.AssumeRole", THROTTLED, 0.25),
    ("iam.*", THROTTLED, 0.05),
    ("dynamodb.record", TABLE_THROTTLED, 0.015),
    ("dynamodb.slot", TABLE_THROTTLED, 0.05),
    ("dynamodb.TransactWriteItems", TABLE_THROTTLED, 0.04),
)
#: Probability that an attempt is set to crash, and where: at the n-th call of an operation. The 2nd
#: ModifyNetworkInterfaceAttribute falls between the two interfaces of an instance, the others between
#: two steps.
CRASH_PROBABILITY = 0.05
CRASH_POINTS = (
    ("ec2.ModifyNetworkInterfaceAttribute", 2),
    ("ec2.DescribeIamInstanceProfileAssociations", 1),
    ("ec2.DescribeInstanceAttribute", 1),
    ("ec2.CreateTags", 1),
)

#: Where a doomed isolation's last receive crashes: after the network cut, at the credentials deny.
DOOMED_CRASH = ("iam.GetInstanceProfile", 1)
DOOMED_PER_ACCOUNT = 1


@dataclass
class Attempt:
    isolation_id: str
    crash_at: tuple[str, int] | None
    doomed: bool = False  # every call of DescribeInstances throttled
    calls: Counter[str] = field(default_factory=Counter)


class Chaos:
    """The fault injector (a botocore hook) and the worker's tally. Thread-safe."""

    def __init__(
        self, seed_value: int, denied_account: str, doomed: set[str], max_receive_count: int
    ) -> None:
        self.rng = random.Random(seed_value)
        #: Instances whose first isolation is throttled on every receive but the last, and crashes on the
        #: last one after the network cut: its message goes on to the DLQ, its record is FAILED
        #: (`WorkerLost`) once swept, and a later request isolates the instance.
        self.doomed_instances = doomed
        self.doomed: dict[str, str] = {}  # instance id -> its doomed isolation
        self.max_receive_count = max_receive_count
        self.denied_account = denied_account
        self.lock = threading.Lock()
        #: The isolation the worker works for in this context (copied into the threads it starts).
        self.current: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("chaos", default=None)
        #: The attempt of each (isolation, phase, receive): the phases of one receive share its plan.
        self.attempts: dict[tuple[str, str, int], Attempt] = {}
        #: Instances whose doomed isolation's current receive is throttled (its DescribeInstances fails,
        #: for every isolation of the batch described in the same call).
        self.doomed_now: set[str] = set()
        self.injected: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()  # what each run of the worker (one per receive) ended with
        self.crashed: set[str] = set()
        self.access_denied = 0
        self.joined: dict[str, str] = {}  # a trigger's isolation id -> the isolation in flight it joined
        #: What each isolation's runs met (receives, faults, outcomes), shown with its violations.
        self.trace: dict[str, list[str]] = {}

    @contextlib.contextmanager
    def attempt(self, job: Any, receive_count: int, phase: str) -> Iterator[None]:
        """Faults are on while the worker works for this job; a crash may be planned for its receive."""
        key = (job.isolation_id, phase, receive_count)
        with self.lock:
            attempt = self.attempts.get(key)
            if attempt is None:
                crash_at = None
                instance_id = job.target.instance_id
                if instance_id in self.doomed_instances and phase == "containment":
                    self.doomed.setdefault(instance_id, job.isolation_id)
                doomed = self.doomed.get(instance_id) == job.isolation_id and phase == "containment"
                if doomed and receive_count >= self.max_receive_count:
                    crash_at, doomed = DOOMED_CRASH, False
                elif job.isolation_id not in self.crashed and self.rng.random() < CRASH_PROBABILITY:
                    crash_at = self.rng.choice(CRASH_POINTS)
                (self.doomed_now.add if doomed else self.doomed_now.discard)(instance_id)
                attempt = self.attempts[key] = Attempt(job.isolation_id, crash_at, doomed)
                self.trace.setdefault(job.isolation_id, []).append(f"{phase} receive {receive_count}")
        token = self.current.set(attempt)
        try:
            yield
        finally:
            self.current.reset(token)

    @contextlib.contextmanager
    def release_attempt(self, isolation_id: str, receive_count: int) -> Iterator[None]:
        """Faults (never a crash) are on while the worker runs this release."""
        self.note(isolation_id, f"release receive {receive_count}")
        token = self.current.set(Attempt(isolation_id, None))
        try:
            yield
        finally:
            self.current.reset(token)

    def ran(self, job: Any, outcome: str) -> None:
        self.ran_on(job.isolation_id, outcome)

    def ran_on(self, isolation_id: str, outcome: str) -> None:
        with self.lock:
            self.runs[outcome] += 1
        self.note(isolation_id, outcome)

    def note(self, isolation_id: str, event: str) -> None:
        with self.lock:
            self.trace.setdefault(isolation_id, []).append(event)

    def __call__(self, event_name: str = "", params: Any = None, **_: Any) -> None:
        attempt = self.current.get()
        if attempt is None:  # not the worker working for an isolation
            return
        _, service, operation = event_name.split(".", 2)
        call = f"{service}.{operation}"
        attempt.calls[call] += 1
        params = params or {}
        key = str(params.get("Key", {}).get("pk", {}).get("S", ""))
        if call == "dynamodb.TransactWriteItems":  # the first item is the record's
            first = next(iter(params.get("TransactItems") or [{}]))
            write = first.get("Update") or first.get("Put") or {}
            key = str((write.get("Key") or write.get("Item") or {}).get("pk", {}).get("S", ""))
        real = call
        if call == "dynamodb.UpdateItem":
            call = "dynamodb.slot" if key.startswith("instance#") else "dynamodb.record"
        fault = self._fault(attempt, call, real, str(params.get("RoleArn", "")), params.get("InstanceIds"))
        if fault is None:
            return
        if isinstance(fault, WorkerCrash):
            self.note(attempt.isolation_id, f"worker crash on {call}")
            raise fault
        self.note(attempt.isolation_id, f"{fault.code} on {call}")
        raise fault.error(operation)

    def _fault(
        self, attempt: Attempt, call: str, real: str, role_arn: str, instance_ids: Any
    ) -> Fault | WorkerCrash | None:
        with self.lock:
            if attempt.crash_at == (call, attempt.calls[call]):
                self.crashed.add(attempt.isolation_id)
                self.injected["worker crash"] += 1
                return WorkerCrash(f"{call} #{attempt.calls[call]} of {attempt.isolation_id}")
            if call == "ec2.DescribeInstances" and set(instance_ids or ()) & self.doomed_now:
                self.injected[
                    f"{THROTTLED_EC2.code} {THROTTLED_EC2.status} (every receive but the last)"
                ] += 1
                return THROTTLED_EC2
            denied = call == "sts.AssumeRole" and self.denied_account in role_arn
            if denied and self.access_denied < ACCESS_DENIED_WINDOW:
                self.access_denied += 1
                self.injected[f"{ACCESS_DENIED.code} {ACCESS_DENIED.status} (sts.AssumeRole)"] += 1
                return ACCESS_DENIED
            for pattern, fault, probability in RULES:
                matches = pattern == call or (pattern.endswith(".*") and call.startswith(pattern[:-1]))
                if matches and self.rng.random() < probability:
                    where = real if call.startswith("dynamodb.") else pattern
                    self.injected[f"{fault.code} {fault.status} ({where})"] += 1
                    return fault
        return None


# --- the requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    account_id: str
    region: str
    instance_id: str
    kind: str  # "normal", "exempt", "terminated" or "missing"


@dataclass
class Request:
    number: int
    source: str
    target: Target
    idempotency_key: str | None = None
    replays: int | None = None  # the number of the request whose Idempotency-Key and body this repeats
    http_status: int | None = None
    answer: Any = None
    event_id: str | None = None

    def own_id(self) -> str | None:
        """The isolation id of the request's own record (a webhook's answer may name a joined one)."""
        if self.source == "webhook":
            return self.answer.get("isolation_id") if isinstance(self.answer, dict) else None
        from shared.models import trigger_isolation_id

        return trigger_isolation_id(self.source, str(self.event_id))


def plan(rng: random.Random, targets: list[Target]) -> list[Request]:
    """Every normal instance once, then 130 repeats, the exempt ones twice, the terminated and the missing
    ones once, shuffled; a third of the webhooks with an Idempotency-Key, half of those sent again."""
    normal = [t for t in targets if t.kind == "normal"]
    requests: list[Request] = []

    def add(source: str, target: Target) -> None:
        requests.append(Request(len(requests), source, target))

    def any_source() -> str:
        return rng.choices(SOURCES, weights=(50, 25, 25))[0]

    for target in normal:
        add(any_source(), target)
    for _ in range(130):
        add(any_source(), rng.choice(normal))
    for target in (t for t in targets if t.kind == "exempt"):
        for _ in range(2):
            add(rng.choice(("guardduty", "tag")), target)
    for target in (t for t in targets if t.kind in EXPECTED_FAILURE):
        add("webhook" if rng.random() < 0.7 else "guardduty", target)
    rng.shuffle(requests)

    ordered = list(requests)
    replays: list[tuple[int, Request]] = []
    for position, request in enumerate(requests):
        if request.source == "webhook" and rng.random() < 0.35:
            request.idempotency_key = f"chaos-{rng.getrandbits(64):016x}"
            if rng.random() < 0.5:
                replay = Request(-1, "webhook", request.target, request.idempotency_key, replays=-1)
                replays.append((position + rng.randint(1, 20), replay))
    for position, replay in sorted(replays, key=lambda pair: -pair[0]):
        ordered.insert(position, replay)
    for number, request in enumerate(ordered):
        request.number = number
    first = {}
    for request in ordered:
        if request.idempotency_key:
            first.setdefault(request.idempotency_key, request.number)
            if request.replays is not None:
                request.replays = first[request.idempotency_key]
    return ordered


def send(stack: LocalStack, request: Request) -> None:
    target = request.target
    if request.source == "webhook":
        headers = {"Idempotency-Key": request.idempotency_key} if request.idempotency_key else None
        body = {
            "instance_id": target.instance_id,
            "account_id": target.account_id,
            "region": target.region,
            "reason": "chaos test",
            "requested_by": "tests/e2e/test_chaos.py",
        }
        request.http_status, request.answer = stack.request("POST", "/isolate", body, headers=headers)
        return
    builder = guardduty_finding if request.source == "guardduty" else tag_change
    event = builder(account_id=target.account_id, region=target.region, instance_id=target.instance_id)
    request.event_id = stack.put_event(event)


# --- the releases -------------------------------------------------------------------------------------


@dataclass
class Release:
    instance: DemoInstance
    #: The instance's requests: the release is asked once each has ended.
    requests: list[Request]
    #: A GuardDuty finding for the instance once it is released: it must isolate it again.
    retrigger: bool = False
    before: dict[str, Any] = field(default_factory=dict)
    isolation_id: str | None = None
    http_status: int | None = None
    answer: Any = None
    #: Why the release was not asked (its instance's latest record could not be released).
    not_asked: str | None = None
    retrigger_event: str | None = None
    asked_again: bool = False


def plan_releases(rng: random.Random, requests: list[Request], demo: dict[str, DemoInstance],
                  doomed: set[str]) -> dict[int, list[Release]]:  # fmt: skip
    """RELEASES normal instances (not doomed, one per Auto Scaling group), each asked for after its last
    request in the plan (the releaser gives the first RETRIGGERED accepted a finding once released)."""
    chosen: list[DemoInstance] = []
    scaled_accounts: set[str] = set()
    for instance_id in rng.sample(sorted(set(demo) - doomed), len(demo) - len(doomed)):
        instance = demo[instance_id]
        if instance.exempt or len(chosen) == RELEASES:
            continue
        if "asg" in instance.label:
            if instance.account_id in scaled_accounts:
                continue
            scaled_accounts.add(instance.account_id)
        chosen.append(instance)
    planned: dict[int, list[Release]] = {}
    for instance in chosen:
        own = [r for r in requests if r.target.instance_id == instance.instance_id]
        if not own:
            continue
        release = Release(instance, own)
        planned.setdefault(max(r.number for r in own), []).append(release)
    return planned


def _ended(stack: LocalStack, request: Request, joined: dict[str, str]) -> bool:
    """The request's isolation (its own record, or the one it joined) has ended."""
    if request.source == "webhook" and request.http_status is None:
        return False  # not answered yet
    own = request.own_id()
    if own is None:
        return True  # refused: no record
    for isolation_id in (own, joined.get(own)):
        if isolation_id is not None:
            status, record = stack.request("GET", f"/isolations/{isolation_id}")
            if status == 200:
                return record["status"] in TERMINAL
    return False  # a trigger the worker has not read yet


def _ask(stack: LocalStack, release: Release) -> None:
    """`POST /isolations/{latest}/release`, when the instance's latest record can be released."""
    instance = release.instance
    latest = next(iter(stack.records(instance.instance_id, instance.account_id)), {"status": "none"})
    if latest["status"] not in ("ISOLATED", "FAILED") or not latest.get("prior_state"):
        release.not_asked = f"its latest isolation is {latest['status']} with nothing to undo"
        return
    release.isolation_id = latest["isolation_id"]
    release.http_status, release.answer = stack.request(
        "POST",
        f"/isolations/{release.isolation_id}/release",
        {"reason": "chaos test", "requested_by": "tests/e2e/test_chaos.py"},
    )


def run_releases(
    stack: LocalStack, due: SimpleQueue[Release], joined: dict[str, str], sent: threading.Event
) -> None:
    """The releaser (one thread, polling once a second): each release made due by the requests' loop is
    asked once its instance's requests have ended; a retrigger gets its finding once RELEASED. Once every
    request is sent, it returns when all are done, when the queue stays empty (nothing more can happen),
    or SETTLE_SECONDS later."""
    pending: list[Release] = []
    retriggers: list[Release] = []
    asked: list[Release] = []
    deadline: float | None = None
    quiet = 0
    while True:
        while not due.empty():
            pending.append(due.get())
        for release in list(pending):
            if all(_ended(stack, request, joined) for request in release.requests):
                pending.remove(release)
                _ask(stack, release)
                # The first RETRIGGERED releases accepted get a finding once RELEASED.
                if release.http_status == 202 and sum(r.retrigger for r in asked) < RETRIGGERED:
                    release.retrigger = True
                    retriggers.append(release)
                asked.append(release)
        for release in list(retriggers):
            _, record = stack.request("GET", f"/isolations/{release.isolation_id}")
            if record["status"] == "RELEASED":
                instance = release.instance
                finding = guardduty_finding(
                    account_id=instance.account_id, region=instance.region, instance_id=instance.instance_id
                )
                release.retrigger_event = stack.put_event(finding)
            if record["status"] in ("RELEASED", "RELEASE_FAILED"):
                retriggers.remove(release)
        if sent.is_set():
            deadline = deadline or time.monotonic() + SETTLE_SECONDS
            if due.empty() and not pending and not retriggers:
                return
            # Nothing on the queue three times in a row: what has not ended waits for the sweeper.
            quiet = quiet + 1 if stack.queue_depth() == 0 else 0
            if quiet >= 3 or time.monotonic() > deadline:
                for release in pending:
                    release.not_asked = "an isolation of it still in flight when the queue went quiet"
                return
        time.sleep(1.0)


# --- the adversary ------------------------------------------------------------------------------------

#: The member's own principal (not the execution role: its calls reach the tamper watch).
ADVERSARY_ROLE = "member-admin"
#: Seconds between two of the adversary's moves while the requests are sent.
ADVERSARY_PACE = (0.8, 2.0)
MANAGED_TAG = "ec2-isolation:managed"


@dataclass
class Adversary:
    """A member with ordinary EC2 rights (`ec2:CreateTags`, `ec2:DeleteTags`, `ec2:CreateSecurityGroup`,
    `ec2:AuthorizeSecurityGroupEgress`) working against the service, with plain clients in its accounts (the
    chaos never faults its calls). Each call it makes reaches the stack's bus as CloudTrail delivers it.

    - `lookalikes`, before the first request: in every VPC, a group named as earlier versions named the
      isolation group and one named as the service names its own now, both tagged managed, egress open;
    - `forge`, while the requests run: an instance gets `ec2-isolation:id` = another instance's isolation or
      its own slot key, and `ec2-isolation:exempt` = true;
    - `reopen`, while the requests run: one of the service's isolation groups (as its table names them)
      loses its managed tag, then gets all egress authorized.
    """

    stack: LocalStack
    accounts: list[Any]
    #: Instances it may forge tags on (not exempt, not planned for a release: a release rightly leaves
    #: whatever tags a member wrote after it).
    forgeable: list[DemoInstance]
    rng: random.Random
    created: set[str] = field(default_factory=set)
    forged: set[str] = field(default_factory=set)
    reopened: set[str] = field(default_factory=set)
    moves: Counter[str] = field(default_factory=Counter)

    def lookalikes(self) -> None:
        for account in self.accounts:
            instance = account.instances[0]
            ec2, _ = member_clients(instance)
            for vpc_id in account.vpcs.values():
                for name in ("ec2-isolation", "ec2-isolation-0badc0de"):
                    group_id = ec2.create_security_group(
                        GroupName=name,
                        Description="not the service's",
                        VpcId=vpc_id,
                        TagSpecifications=[
                            {
                                "ResourceType": "security-group",
                                "Tags": [{"Key": MANAGED_TAG, "Value": "true"}],
                            }
                        ],
                    )["GroupId"]
                    self.created.add(group_id)
                    self.moves["look-alike group"] += 1

    def run(self, done: threading.Event) -> None:
        """Forge and reopen, alternately, until `done`."""
        while not done.wait(self.rng.uniform(*ADVERSARY_PACE)):
            if self.rng.random() < 0.6:
                self.forge(self.rng.choice(self.forgeable))
            else:
                self.reopen()

    def forge(self, instance: DemoInstance) -> None:
        others = [r["isolation_id"] for r in self.stack.records(self.rng.choice(self.forgeable).instance_id)]
        pointer = (
            self.rng.choice(others)
            if others and self.rng.random() < 0.6
            else f"instance#{instance.account_id}#{instance.region}#{instance.instance_id}"
        )
        tags = [
            {"Key": "ec2-isolation:id", "Value": pointer},
            {"Key": "ec2-isolation:exempt", "Value": "true"},
        ]
        member_clients(instance)[0].create_tags(Resources=[instance.instance_id], Tags=tags)
        self._called(
            instance.account_id,
            instance.region,
            "CreateTags",
            {
                "resourcesSet": {"items": [{"resourceId": instance.instance_id}]},
                "tagSet": {"items": [{"key": t["Key"], "value": t["Value"]} for t in tags]},
            },
        )
        self.forged.add(instance.instance_id)
        self.moves["forged pointer and exemption"] += 1

    def reopen(self) -> None:
        owned = service_groups(self.stack)
        if not owned:
            return
        (account_id, region, vpc_id), group_id = self.rng.choice(sorted(owned.items()))
        instance = next(i for a in self.accounts for i in a.instances if i.vpc_id == vpc_id)
        ec2, _ = member_clients(instance)
        ec2.delete_tags(Resources=[group_id], Tags=[{"Key": MANAGED_TAG}])
        self._called(
            account_id,
            region,
            "DeleteTags",
            {
                "resourcesSet": {"items": [{"resourceId": group_id}]},
                "tagSet": {"items": [{"key": MANAGED_TAG}]},
            },
        )
        permission = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        with contextlib.suppress(
            ClientError
        ):  # the rule is there already (an earlier reopen not repaired yet)
            ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=[permission])
        self._called(
            account_id,
            region,
            "AuthorizeSecurityGroupEgress",
            {
                "groupId": group_id,
                "ipPermissions": {
                    "items": [{"ipProtocol": "-1", "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]
                },
            },
        )
        self.reopened.add(group_id)
        self.moves["isolation group reopened"] += 1

    def _called(self, account_id: str, region: str, name: str, parameters: dict[str, Any]) -> None:
        event = cloudtrail_call(
            source="aws.ec2",
            event_name=name,
            account_id=account_id,
            region=region,
            caller_role_arn=f"arn:aws:iam::{account_id}:role/{ADVERSARY_ROLE}",
            session_name="adversary",
            request_parameters=parameters,
            response_elements={"_return": True},
        )
        self.stack.put_event(event, account_id=account_id)


def service_groups(stack: LocalStack) -> dict[tuple[str, str, str], str]:
    """The isolation groups the service's table names: (account, region, VPC) -> group id."""
    found: dict[tuple[str, str, str], str] = {}
    for item in scan_table(stack):
        pk = str(item["pk"])
        if not pk.startswith("groups#"):
            continue
        _, account_id, region = pk.split("#", 2)
        for vpc_id, claim in item.items():
            if vpc_id.startswith("vpc-") and isinstance(claim, dict) and claim.get("group_id"):
                found[(account_id, region, vpc_id)] = str(claim["group_id"])
    return found


# --- what the member accounts and the stack show ------------------------------------------------------


@dataclass
class Observed:
    eni_groups: dict[str, list[str]]
    profile_arn: str | None
    protected: bool
    tags: dict[str, str]
    stop_protected: bool
    shutdown: str
    #: Attached EBS volumes and their DeleteOnTermination.
    volumes: dict[str, bool]
    #: The volumes of the snapshots tagged with the instance's id.
    snapshot_volumes: set[str]
    #: The instance is in the deny policy of its original profile's role.
    denied: bool
    #: In an Auto Scaling group or registered with a load balancer.
    load_balanced: bool


def _denied(iam: Any, instance: DemoInstance) -> bool:
    if instance.instance_profile_arn is None:
        return False
    profile = iam.get_instance_profile(InstanceProfileName=instance.instance_profile_arn.rsplit("/", 1)[-1])
    (role,) = profile["InstanceProfile"]["Roles"]
    try:
        document = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=DENY_POLICY)["PolicyDocument"]
    except iam.exceptions.NoSuchEntityException:
        return False
    return instance.arn in document["Statement"][0]["Condition"]["ArnEquals"]["ec2:SourceInstanceARN"]


def observe(instance: DemoInstance, earlier: Collection[str] = ()) -> Observed:
    """The instance as it is. `earlier`: isolations of episodes that a release ended; the snapshots they
    took are kept as evidence, and are no later isolation's doing."""
    ec2, iam = member_clients(instance)
    interfaces = ec2.describe_network_interfaces(NetworkInterfaceIds=instance.eni_ids)["NetworkInterfaces"]
    # moto's DescribeInstances lags a profile replacement: the associations are the truth.
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[
            {"Name": "instance-id", "Values": [instance.instance_id]},
            {"Name": "state", "Values": ["associated"]},
        ]
    )["IamInstanceProfileAssociations"]
    described = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0]
    protection = ec2.describe_instance_attribute(
        InstanceId=instance.instance_id, Attribute="disableApiTermination"
    )
    stop = ec2.describe_instance_attribute(InstanceId=instance.instance_id, Attribute="disableApiStop")
    shutdown = ec2.describe_instance_attribute(
        InstanceId=instance.instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    snapshots = ec2.describe_snapshots(
        OwnerIds=["self"],
        Filters=[{"Name": "tag:ec2-isolation:instance-id", "Values": [instance.instance_id]}],
    )["Snapshots"]
    return Observed(
        eni_groups={eni["NetworkInterfaceId"]: [g["GroupId"] for g in eni["Groups"]] for eni in interfaces},
        profile_arn=";".join(sorted(a["IamInstanceProfile"]["Arn"] for a in associations)) or None,
        protected=bool(protection["DisableApiTermination"]["Value"]),
        tags={tag["Key"]: tag["Value"] for tag in described.get("Tags", [])},
        stop_protected=bool(stop["DisableApiStop"]["Value"]),
        shutdown=str(shutdown["InstanceInitiatedShutdownBehavior"]["Value"]),
        volumes={
            m["Ebs"]["VolumeId"]: bool(m["Ebs"]["DeleteOnTermination"])
            for m in described["BlockDeviceMappings"]
        },
        snapshot_volumes={
            snapshot["VolumeId"]
            for snapshot in snapshots
            if {tag["Key"]: tag["Value"] for tag in snapshot.get("Tags", [])}.get("ec2-isolation:id")
            not in earlier
        },
        denied=_denied(iam, instance),
        load_balanced=load_balanced(instance),
    )


def isolation_groups(instance: DemoInstance, owned: dict[tuple[str, str, str], str]) -> list[dict[str, Any]]:
    """The isolation group of the instance's VPC as the service's table names it (`service_groups`), as
    the member account shows it; none before the VPC's first isolation."""
    group_id = owned.get((instance.account_id, instance.region, instance.vpc_id))
    if group_id is None:
        return []
    ec2, _ = member_clients(instance)
    return list(ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"])


def named_like_isolation_groups(instance: DemoInstance, prefix: str) -> list[dict[str, Any]]:
    """Every group of the instance's VPC named as the service names its isolation groups (`<prefix>-...`),
    whoever made it."""
    ec2, _ = member_clients(instance)
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [instance.vpc_id]}])
    return [g for g in groups["SecurityGroups"] if g["GroupName"].startswith(f"{prefix}-")]


def scan_table(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.provisioned is not None
    deserializer = TypeDeserializer()
    pages = (
        stack.client("dynamodb")
        .get_paginator("scan")
        .paginate(TableName=stack.provisioned.table_name, ConsistentRead=True)
    )
    return [
        {k: deserializer.deserialize(v) for k, v in item.items()} for page in pages for item in page["Items"]
    ]


def dead_letters(stack: LocalStack) -> list[str]:
    assert stack.provisioned is not None
    sqs = stack.client("sqs")
    bodies: dict[str, str] = {}
    for queue in (stack.provisioned.dead_letter_queue_url, stack.provisioned.follow_up_dead_letter_queue_url):
        for _ in range(50):
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=300).get(
                "Messages", []
            )
            if not messages:
                break
            bodies.update((m["MessageId"], m["Body"]) for m in messages)
    return list(bodies.values())


def tamper_depth(stack: LocalStack) -> int:
    """Messages on the tamper queue (visible + in flight + delayed)."""
    assert stack.provisioned is not None
    return stack.messages_on(stack.provisioned.resources["TamperQueue"])


def settle(stack: LocalStack, *, timeout: float) -> float:
    """Seconds until nothing can change any more: the isolation, follow-up and tamper queues empty (no
    message visible, in flight or delayed) three times in a row. A record still QUEUED or IN_PROGRESS then
    has nothing to end it."""
    begun = time.monotonic()
    quiet = 0
    while time.monotonic() - begun < timeout and quiet < 3:
        idle = (
            stack.queue_depth() == 0 and stack.queue_depth(follow_up=True) == 0 and tamper_depth(stack) == 0
        )
        quiet = quiet + 1 if idle else 0
        time.sleep(0.5)
    return time.monotonic() - begun


# --- the test -----------------------------------------------------------------------------------------


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The worker's JSON log lines (thousands) off the terminal; the level is put back after."""
    from shared.observability import logger

    level = logger.log_level
    logger.setLevel("CRITICAL")
    yield
    logger.setLevel(level)


def test_chaos(
    monkeypatch: pytest.MonkeyPatch,
    serial_dynamodb: None,
    quiet_logs: None,
    figures: Callable[[str, str], None],
) -> None:
    started = time.monotonic()
    with LocalStack(
        seed_demo=True,
        region="eu-west-1",
        pollers=2,
        worker=False,
        environment={"POWERTOOLS_METRICS_DISABLED": "true"},
        # The faults and crashes are injected in this process (hooks, patched functions): the
        # functions run here too.
        environments="thread",
        demo_accounts=ACCOUNT_NAMES,
        demo_instances=SPECS,
    ) as stack:
        import worker.receive
        import worker.runner
        from shared import aws
        from shared.config import worker_settings
        from shared.models import FollowUpMessage, trigger_isolation_id
        from shared.store import IsolationStore, Joined
        from worker.messages import parse, release_of
        from worker.release import ReleaseAttempt

        assert stack.demo is not None and stack.provisioned is not None
        settings = worker_settings()
        max_receive = settings.MAX_RECEIVE_COUNT
        sqs = stack.client("sqs")
        for queue in (stack.provisioned.queue_url, stack.provisioned.follow_up_queue_url):
            redrive = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])["Attributes"]
            assert int(json.loads(redrive["RedrivePolicy"])["maxReceiveCount"]) == max_receive == 5
            sqs.set_queue_attributes(
                QueueUrl=queue, Attributes={"VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS)}
            )
        monkeypatch.setattr(worker.receive, "LEASE_SECONDS", LEASE_SECONDS)

        # Three member accounts; one instance of each is terminated, two made-up ids per account.
        accounts = stack.demo.accounts
        assert len(accounts) == 3
        rng = random.Random(SEED)
        targets: list[Target] = []
        demo: dict[str, DemoInstance] = {}
        for account in accounts:
            for instance in account.instances:
                kind = "exempt" if instance.exempt else "normal"
                if instance.label == "chaos-terminated":
                    member_clients(instance)[0].terminate_instances(InstanceIds=[instance.instance_id])
                    kind = "terminated"
                else:
                    demo[instance.instance_id] = instance
                targets.append(Target(instance.account_id, instance.region, instance.instance_id, kind))
            for _ in range(2):
                targets.append(
                    Target(account.account_id, stack.region, f"i-0{rng.getrandbits(64):016x}", "missing")
                )
        before = {instance_id: observe(instance) for instance_id, instance in demo.items()}
        requests = plan(rng, targets)
        assert len(requests) >= 200
        seeded = time.monotonic()

        # Faults on the worker's calls only; the worker's runs and the joins tallied.
        doomed = {
            instance.instance_id
            for account in accounts[:2]
            for instance in [i for i in account.instances if i.instance_id in demo][:DOOMED_PER_ACCOUNT]
        }
        chaos = Chaos(SEED, accounts[2].account_id, doomed, max_receive)
        # The releases: their own seeded choice (the isolations' plan and pace are as without them).
        releases = plan_releases(random.Random(SEED + 1), requests, demo, doomed)
        planned_releases = [release for batch in releases.values() for release in batch]
        for release in planned_releases:
            release.before = observed_state(instance_clients(release.instance), release.instance.instance_id)
        released_ids = {release.instance.instance_id for release in planned_releases}
        adversary = Adversary(
            stack,
            accounts,
            [i for i in demo.values() if not i.exempt and i.instance_id not in released_ids],
            random.Random(SEED + 2),
        )
        adversary.lookalikes()
        real_release = ReleaseAttempt.run
        real_acting = worker.runner._Receive.acting
        real_conclude = worker.runner._Receive.conclude
        real_settle = worker.runner._Receive.settle
        real_create = IsolationStore.create_queued

        @contextlib.contextmanager
        def acting(receive: Any) -> Iterator[None]:
            job = receive.subject
            phase = "follow-up" if isinstance(receive, worker.runner.FollowUp) else "containment"
            with chaos.attempt(job, receive.receive_count, phase), real_acting(receive):
                try:
                    yield
                except WorkerCrash:
                    chaos.ran(job, "crashed")
                    raise

        def conclude(receive: Any, outcome: Any) -> Any:
            chaos.ran(receive.subject, real_conclude(receive, outcome).value)
            return outcome

        def run_release(attempt: Any) -> Any:
            isolation_id = attempt.message.isolation_id
            with chaos.release_attempt(isolation_id, attempt.receive_count):
                try:
                    outcome = real_release(attempt)
                except Exception as exc:
                    chaos.ran_on(isolation_id, f"release retry ({getattr(exc, 'code', type(exc).__name__)})")
                    raise
            chaos.ran_on(isolation_id, f"release {outcome.value}")
            return outcome

        def settle_receive(receive: Any, exc: Exception) -> Any:
            try:
                return real_settle(receive, exc)
            except Exception as error:
                chaos.ran(receive.subject, f"retry ({getattr(error, 'code', type(error).__name__)})")
                raise

        def create_queued(store: IsolationStore, record: Any, **kwargs: Any) -> Any:
            created = real_create(store, record, **kwargs)
            if isinstance(created, Joined):
                with chaos.lock:
                    chaos.joined[record.isolation_id] = created.isolation_id
            return created

        monkeypatch.setattr(ReleaseAttempt, "run", run_release)
        # On the isolations' receives only (`worker.runner._Receive`): a release, a `worker.receive.Receive`
        # too, keeps the real ones (its faults, never a crash, are `run_release`'s).
        monkeypatch.setattr(worker.runner._Receive, "acting", acting)
        monkeypatch.setattr(worker.runner._Receive, "conclude", conclude)
        monkeypatch.setattr(worker.runner._Receive, "settle", settle_receive)
        monkeypatch.setattr(IsolationStore, "create_queued", create_queued)
        remove_hook = aws.add_event_hook("before-parameter-build", chaos)
        try:
            # Powertools prints its metric set every 100 values even with metrics disabled: not here.
            with contextlib.redirect_stdout(io.StringIO()):
                stack.resume_worker()
                due: SimpleQueue[Release] = SimpleQueue()
                all_sent = threading.Event()
                with ThreadPoolExecutor(max_workers=6, thread_name_prefix="chaos-client") as clients:
                    releaser = clients.submit(run_releases, stack, due, chaos.joined, all_sent)
                    attacker = clients.submit(adversary.run, all_sent)
                    futures = []
                    for request in requests:  # four at a time, paced so the worker interleaves
                        futures.append(clients.submit(send, stack, request))
                        for release in releases.get(request.number, []):  # after the instance's last request
                            due.put(release)
                        time.sleep(rng.uniform(0.0, 0.04))
                    for future in futures:
                        future.result()
                    all_sent.set()
                    releaser.result()
                    attacker.result()
                sent = time.monotonic()
                settled = settle(stack, timeout=SETTLE_SECONDS)
        finally:
            stack.pause_worker()
            remove_hook()
        finished = time.monotonic()

        # The scheduled sweeper runs once the last leases have expired: it ends FAILED the records whose
        # worker was lost on the last receive. A responder reads the records through the API (reads
        # change nothing). Then the table as it is.
        time.sleep(LEASE_SECONDS)
        stack.run_schedules()
        # A release that ended RELEASE_FAILED (the faults won), not superseded, is asked again, as a
        # responder would, with the faults off now.
        for release in planned_releases:
            if release.http_status != 202:
                continue
            _, record = stack.request("GET", f"/isolations/{release.isolation_id}")
            latest = stack.records(release.instance.instance_id, release.instance.account_id)[0]
            error = (record.get("release") or {}).get("error") or {}
            if (
                record["status"] == "RELEASE_FAILED"
                and latest["isolation_id"] == release.isolation_id
                and error.get("code") != "Superseded"
            ):
                release.asked_again = True
                stack.request("POST", f"/isolations/{release.isolation_id}/release", {"reason": "again"})
        if any(release.asked_again for release in planned_releases):
            with contextlib.redirect_stdout(io.StringIO()):
                stack.resume_worker()
                settle(stack, timeout=60)
                stack.pause_worker()
        for item in scan_table(stack):
            if str(item["pk"]).startswith("iso-"):
                stack.request("GET", f"/isolations/{item['pk']}")
        items = scan_table(stack)
        records = {str(item["pk"]): item for item in items if str(item["pk"]).startswith("iso-")}
        for isolation_id, record in records.items():  # shown with the record in a violation
            record["trace"] = chaos.trace.get(isolation_id, [])
        dlq = dead_letters(stack)
        problems: list[str] = []

        def expect(condition: Any, message: str, *details: Any) -> bool:
            if not condition:
                problems.append(message + "".join(f"\n    {_show(detail)}" for detail in details))
            return bool(condition)

        # --- every request ends ISOLATED, FAILED or SKIPPED; nothing QUEUED or IN_PROGRESS ----------
        for record in records.values():
            expect(record["status"] in TERMINAL, f"record {record['status']} after {settled:.0f} s", record)
        expect(stack.queue_depth() + stack.queue_depth(follow_up=True) == 0, "messages left on the queues")

        outcomes: dict[int, dict[str, Any]] = {}
        for request in requests:
            if request.source == "webhook":
                expect(request.http_status in (200, 202), "webhook not accepted", request)
                if request.http_status not in (200, 202):
                    continue
                deduplicated = request.http_status == 200
                expect(
                    deduplicated == bool(request.answer.get("deduplicated")),
                    "200 without deduplicated",
                    request,
                )
            own = request.own_id()
            isolation_id = own if own in records else chaos.joined.get(str(own))
            if not expect(isolation_id, "a request without a record that joined nothing", request):
                continue
            status, record = stack.request("GET", f"/isolations/{isolation_id}")
            if not expect(status == 200, f"GET /isolations/{isolation_id} answered {status}", record):
                continue
            outcomes[request.number] = record
            target = request.target
            expect(record["status"] in TERMINAL, "a request not ended", request, record)
            expect(
                (record["account_id"], record["instance_id"]) == (target.account_id, target.instance_id),
                "a request answered with another instance's isolation",
                request,
                record,
            )
            if target.kind in EXPECTED_FAILURE:
                error = record.get("error") or {}
                expect(
                    record["status"] == "FAILED"
                    and (
                        error.get("code") in (EXPECTED_FAILURE[target.kind], "RoleNotAssumable")
                        or "gave up after" in str(error.get("message", ""))
                        # its worker crashed on the last receive before it could find out
                        or (
                            isolation_id in chaos.crashed
                            and error.get("code") in ("WorkerLost", "DeadLettered")
                        )
                    ),
                    f"a {target.kind} instance's isolation did not fail as it should",
                    record,
                )
            if target.kind == "exempt":
                expect(record["status"] != "ISOLATED", "a trigger isolated an exempt instance", record)
            if request.replays is not None:
                first = requests[request.replays]
                expect(
                    request.answer == first.answer,
                    "a repeated Idempotency-Key got another answer",
                    request,
                    first,
                )

        for record in records.values():
            if record["status"] == "FAILED":
                expect((record.get("error") or {}).get("code"), "FAILED without an error", record)
                expect(
                    (record.get("error") or {}).get("code") != "IsolationInProgress",
                    "FAILED for a lease no live worker held (handlers run one at a time here, and a "
                    "crashed attempt's lease expires before its message comes back)",
                    record,
                )
            if record["status"] == "ISOLATED" and not _coalesced(record):
                last = {step["name"]: step["status"] for step in record["steps"]}
                expect(
                    all(last.get(name) in ("done", "already") for name in STEPS)
                    and record.get("contained_at"),
                    "ISOLATED with a step not in place",
                    record,
                )
        held = [item for item in items if str(item["pk"]).startswith("instance#") and item.get("active_id")]
        for slot in held:
            expect(
                False,
                "an in-flight slot still taken after every record ended",
                slot,
                records.get(slot["active_id"]),
            )

        # --- DLQ: each message's record has ended (FAILED, or done before a batch-mate's crash) ----
        # A dead environment returns its whole batch, successes included (as in Lambda): a message whose
        # isolation ended ISOLATED may come back until its receives run out. Its record says what is so.
        for body in dlq:
            asked = release_of(body)
            if asked is not None:
                [job] = [asked]
            elif "follow-up" in body:
                [job] = [FollowUpMessage.model_validate_json(body)]
            else:
                [job] = parse(body)
            record = records.get(job.isolation_id) or {}
            expect(
                record.get("status") in TERMINAL, "a message in the DLQ whose record has not ended", record
            )

        # --- the member accounts: what is in place is what the records say ------------------------
        history: dict[str, list[dict[str, Any]]] = {}
        for record in records.values():
            history.setdefault(record["instance_id"], []).append(record)
        isolated = 0
        unrecorded: Counter[str] = Counter()
        planned = {release.instance.instance_id: release for release in planned_releases}
        as_before = 0
        mid_episode: list[str] = []
        owned = service_groups(stack)
        for instance_id, instance in demo.items():
            since = history.get(instance_id, [])
            # The releasing records (an earlier record of a released episode reads RELEASED too, naming
            # its releasing record in released_by)
            released = [r for r in since if r["status"] == "RELEASED" and not r.get("released_by")]
            if released:
                # Released: as it was before its isolation, unless a later isolation started a new episode.
                last = max(released, key=lambda r: str(r["released_at"]))
                steps = {s["name"]: s["status"] for s in (last.get("release") or {}).get("steps") or []}
                expect(
                    steps and all(status in ("done", "already", "skipped") for status in steps.values()),
                    "RELEASED with a release step not done (its last outcome)",
                    last,
                )
                # And no record of the episode (nor of an earlier one) still reads as if it were not
                asked = str((last.get("release") or {}).get("requested_at") or last["released_at"])
                unended = [
                    r
                    for r in since
                    if r["account_id"] == last["account_id"]
                    and not r.get("dry_run")
                    and str(r["created_at"]) <= asked
                    and (
                        r["status"] in ("ISOLATED", "RELEASE_FAILED")
                        or (r["status"] == "FAILED" and r.get("prior_state"))
                    )
                ]
                expect(not unended, "a record of a released episode not RELEASED", last, *unended)
                since = [r for r in since if str(r["created_at"]) > str(last["released_at"])]
                expect(
                    not any(_coalesced(r) for r in since),
                    "an isolation after a release coalesced with the released one",
                    *since,
                )
                if not since:
                    was = planned[instance_id].before
                    now = observed_state(instance_clients(instance), instance_id)
                    recorded = _prior_as_observed(last.get("prior_state") or {})
                    if any(was[what] != value for what, value in recorded.items()):
                        # The episode's prior state was recorded after an earlier isolation of the instance
                        # had changed it and failed before its tag (an episode is known by its tag): the
                        # release can only put back what its record says. Counted, and held to that.
                        mid_episode.append(instance_id)
                        was = was | recorded
                    differences = release_problems(was, now)
                    expect(
                        not differences,
                        f"{instance.label} {instance_id}: released, not as it was before its isolation "
                        "(or, for a prior state recorded mid-episode, as that prior state says)",
                        *differences,
                        *history.get(instance_id, []),
                    )
                    as_before += not differences and instance_id not in mid_episode
                    continue
            release = planned.get(instance_id)
            if release is not None and release.retrigger_event is not None:
                found = trigger_isolation_id("guardduty", release.retrigger_event)
                expect(
                    any(r["isolation_id"] in (found, chaos.joined.get(found)) for r in since),
                    f"{instance.label} {instance_id}: a finding after its release isolated nothing",
                    *since,
                )
            isolated += _check_instance(
                expect,
                instance,
                since,
                before[instance_id],
                observe(
                    instance,
                    earlier={r["isolation_id"] for r in history.get(instance_id, []) if r not in since},
                ),
                isolation_groups(instance, owned),
                settings.ISOLATION_PROFILE_NAME,
                unrecorded,
                # Tags a member forged after the instance's last isolation ended other than ISOLATED are
                # nobody's to repair (the tamper watch re-tags isolated instances only).
                forged=instance_id in adversary.forged
                and not (since and max(since, key=lambda r: str(r["created_at"]))["status"] == "ISOLATED"),
            )
        for account in accounts:
            for kind, vpc_id in account.vpcs.items():
                instance = next(i for i in account.instances if i.vpc_id == vpc_id)
                groups = isolation_groups(instance, owned)
                made = [
                    g
                    for g in named_like_isolation_groups(instance, settings.ISOLATION_SG_NAME)
                    if g["GroupId"] not in adversary.created
                ]
                expect(len(made) <= 1, f"isolation groups made in the {kind} VPC of {account.name}", *made)
                for group in groups:
                    tags = {tag["Key"]: tag["Value"] for tag in group.get("Tags", [])}
                    expect(
                        not group["IpPermissions"] and not group["IpPermissionsEgress"],
                        "rules on an isolation group",
                        group,
                    )
                    expect(
                        tags.get(MANAGED_TAG) == "true", "an isolation group without its managed tag", group
                    )
        ec2_by_account = {account.account_id: member_clients(account.instances[0])[0] for account in accounts}
        for group_id in adversary.created:  # never used, never touched (they are not the service's)
            for account_id, ec2 in ec2_by_account.items():
                found = ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group_id]}])
                for group in found["SecurityGroups"]:
                    expect(group["IpPermissionsEgress"], "a look-alike group's rules were revoked", group)
                    used = ec2.describe_network_interfaces(
                        Filters=[{"Name": "group-id", "Values": [group_id]}]
                    )["NetworkInterfaces"]
                    expect(not used, f"a look-alike group of {account_id} is in use", group, *used)
            _, iam = member_clients(account.instances[0])
            profile = iam.get_instance_profile(InstanceProfileName=settings.ISOLATION_PROFILE_NAME)[
                "InstanceProfile"
            ]
            roles = [role["RoleName"] for role in profile["Roles"]]
            policies = [
                policy["PolicyArn"]
                for role in roles
                for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
            ]
            expect(
                len(roles) == 1 and policies == [DENY_ALL], "the isolation profile allows something", profile
            )

        lines = _figures(
            requests=requests,
            outcomes=outcomes,
            records=records,
            chaos=chaos,
            dlq=len(dlq),
            instances=len(demo),
            isolated=isolated,
            unrecorded=unrecorded,
            releases=planned_releases,
            as_before=as_before,
            mid_episode=len(mid_episode),
            seconds={
                "seed": seeded - started,
                "requests": sent - seeded,
                "settle": settled,
                "total": finished - started,
            },
        )
        lines.append(
            "chaos: adversary: "
            + ", ".join(f"{move} x{n}" for move, n in sorted(adversary.moves.items()))
            + f" ({len(adversary.forged)} instances' tags forged, {len(adversary.reopened)} groups reopened)"
        )
        if problems:
            lines.append(f"chaos: {len(problems)} violations (the first 10 below)")
            lines += [f"chaos: - {problem}" for problem in problems[:10]]
        text = "\n".join(lines)
        figures(TITLE, text)
        print("\n" + text)
        assert not problems, f"{len(problems)} violations:\n" + "\n".join(problems[:25])


def _coalesced(record: dict[str, Any]) -> bool:
    return [step["name"] for step in record["steps"]] == ["coalesced"]


_SHOWN = ("isolation_id", "status", "source", "instance_id", "attempts", "error", "contained_at")


def _show(value: Any) -> str:
    """A record in one line: its main fields, its steps, and what the worker's runs of it met."""
    if isinstance(value, dict) and "isolation_id" in value and "steps" in value:
        steps = [f"{s['name']}:{s['status']}" for s in value.get("steps", [])]
        released = [f"{s['name']}:{s['status']}" for s in (value.get("release") or {}).get("steps") or []]
        value = {key: value.get(key) for key in _SHOWN} | {"steps": steps, "release": released,
                                                            "trace": value.get("trace")}  # fmt: skip
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _done(history: list[dict[str, Any]], name: str) -> bool:
    return any(s["name"] == name and s["status"] in ("done", "already") for r in history for s in r["steps"])


def _tried(history: list[dict[str, Any]], name: str) -> bool:
    return any(s["name"] == name for r in history for s in r["steps"])


def _check_instance(
    expect: Callable[..., bool],
    instance: DemoInstance,
    history: list[dict[str, Any]],
    before: Observed,
    now: Observed,
    groups: list[dict[str, Any]],
    profile_name: str,
    unrecorded: Counter[str],
    *,
    forged: bool = False,
) -> int:
    """What is in place on the instance is what its records say, and isolated when one says ISOLATED.
    `forged`: a member wrote `ec2-isolation:` tags on it after its last isolation, which did not end
    ISOLATED (nothing repairs them): its tags are not checked.

    A change no record mentions is a violation. A record mentions a change by the step's outcome, or, when
    the injector lost that outcome (a crash or a failed record write after the change, and no later
    attempt got as far as that step again), by the step planned on record (`planned`, stored before the
    change): counted in `unrecorded`. Returns 1 for an isolated instance.
    """
    where = f"{instance.label} {instance.instance_id} in {instance.account_id}"
    state = {"records": [_show(r) for r in history], "before": before.__dict__, "now": now.__dict__}
    group_ids = [g["GroupId"] for g in groups]
    profile_suffix = f":instance-profile/{profile_name}"

    def recorded(step: str, what: str, records: list[dict[str, Any]] = history) -> None:
        if _tried(records, step):
            return
        if any(step in (r.get("planned") or ()) for r in records):
            unrecorded[step] += 1
            return
        expect(False, f"{where}: {what}, no record says so", state)

    # Network: each interface has its own groups or only the VPC's isolation group, nothing in between.
    changed = [eni for eni, ids in now.eni_groups.items() if ids != before.eni_groups[eni]]
    expect(
        all(now.eni_groups[eni] == group_ids for eni in changed),
        f"{where}: an interface neither as it was nor isolated",
        state,
    )
    if changed:
        recorded("swap-security-groups", "interfaces isolated")
    if _done(history, "swap-security-groups"):
        expect(
            len(changed) == len(now.eni_groups), f"{where}: swap recorded, an interface not isolated", state
        )
        expect(any(r.get("contained_at") for r in history), f"{where}: swap recorded, no contained_at", state)

    # Instance profile: the original or the isolation profile.
    swapped = now.profile_arn != before.profile_arn
    if swapped:
        expect(
            str(now.profile_arn).endswith(profile_suffix),
            f"{where}: a profile neither as it was nor the isolation one",
            state,
        )
        recorded("swap-instance-profile", "profile swapped")
    if _done(history, "swap-instance-profile"):
        expect(
            str(now.profile_arn).endswith(profile_suffix),
            f"{where}: profile swap recorded, not in place",
            state,
        )

    # Termination protection.
    if now.protected:
        recorded("enable-termination-protection", "termination protection on")
    if _done(history, "enable-termination-protection"):
        expect(now.protected, f"{where}: protection recorded, not in place", state)

    # Tags: the id and source of one of the instance's isolations.
    tagged = now.tags.get("ec2-isolation:id")
    sources = {r["isolation_id"]: r["source"] for r in history}
    if tagged is not None and not forged:
        expect(tagged in sources, f"{where}: tagged with the id of none of its isolations", state)
        expect(
            now.tags.get("ec2-isolation:source") == sources.get(tagged), f"{where}: wrong source tag", state
        )
        expect(now.tags.get("ec2-isolation:at"), f"{where}: no ec2-isolation:at tag", state)
        recorded(
            "tag-instance",
            f"tagged by {tagged}, its record does not say so",
            [r for r in history if r["isolation_id"] == tagged],
        )
    if _done(history, "tag-instance"):
        expect(tagged is not None, f"{where}: tagging recorded, no tag", state)

    # Credentials, protections, evidence: what is in place, some record says was done.
    if now.denied:
        recorded("deny-instance-credentials", "credentials denied on its role")
    if now.stop_protected:
        recorded("enable-stop-protection", "stop protection on")
    if now.shutdown == "stop" and before.shutdown != "stop":
        recorded("stop-on-shutdown", "shutdown behaviour stop")
    if now.snapshot_volumes:
        recorded("snapshot-volumes", "snapshots taken")
    expect(
        not now.snapshot_volumes or now.snapshot_volumes == set(now.volumes),
        f"{where}: snapshots of some volumes only (one CreateSnapshots takes them all)",
        state,
    )
    touched = now.denied or now.stop_protected or now.snapshot_volumes or now.volumes != before.volumes

    if instance.exempt or not history:
        expect(
            not changed and not swapped and not now.protected and tagged is None and not touched,
            f"{where}: touched",
            state,
        )

    # Isolated (docs/record.md's steps) for an instance with an ISOLATED record.
    if not any(r["status"] == "ISOLATED" for r in history):
        return 0
    expect(
        len(group_ids) == 1
        and all(ids == group_ids for ids in now.eni_groups.values())
        and not groups[0]["IpPermissions"]
        and not groups[0]["IpPermissionsEgress"]
        and str(now.profile_arn).endswith(profile_suffix)
        and now.protected
        and tagged is not None
        and (now.denied or instance.instance_profile_arn is None)
        and now.stop_protected
        and now.shutdown == "stop"
        and not any(now.volumes.values())
        and now.snapshot_volumes == set(now.volumes)
        and not now.load_balanced,
        f"{where}: an ISOLATED record, the instance not isolated (network, API, credentials, protections, "
        "snapshots, Auto Scaling and load balancers)",
        state,
    )
    return 1


def _figures(
    *,
    requests: list[Request],
    outcomes: dict[int, dict[str, Any]],
    records: dict[str, dict[str, Any]],
    chaos: Chaos,
    dlq: int,
    instances: int,
    isolated: int,
    unrecorded: Counter[str],
    releases: list[Release],
    as_before: int,
    mid_episode: int,
    seconds: dict[str, float],
) -> list[str]:
    by_source = Counter(r.source for r in requests)
    keyed = sum(1 for r in requests if r.idempotency_key and r.replays is None)
    replayed = sum(1 for r in requests if r.replays is not None)
    deduplicated = sum(1 for r in requests if r.http_status == 200)
    joined = sum(1 for r in requests if r.source != "webhook" and r.own_id() not in records)
    coalesced = sum(1 for r in outcomes.values() if _coalesced(r))
    by_status = Counter(r["status"] for r in outcomes.values())
    failed = Counter((r.get("error") or {}).get("code") for r in outcomes.values() if r["status"] == "FAILED")
    retried = sum(n for outcome, n in chaos.runs.items() if outcome.startswith("retry"))
    faults = sorted(chaos.injected.items(), key=lambda kv: (-kv[1], kv[0]))
    lines = [
        f"{len(requests)} requests, {instances} instances in 3 accounts, seed {SEED}, "
        f"{seconds['total']:.0f} s (setup {seconds['seed']:.0f} s, requests {seconds['requests']:.0f} s, "
        f"settle {seconds['settle']:.0f} s)",
        "requests: "
        + ", ".join(f"{source} {by_source[source]}" for source in SOURCES)
        + f"; {keyed} with an Idempotency-Key, {replayed} of them repeated; {deduplicated} webhooks "
        f"deduplicated, {joined} triggers joined an isolation in flight, {coalesced} coalesced",
        f"faults injected: {sum(chaos.injected.values())}: "
        + ", ".join(f"{kind} x{n}" for kind, n in faults),
        "outcomes: "
        + ", ".join(
            f"{status} {by_status[status]}"
            for status in ("ISOLATED", "FAILED", "SKIPPED", "RELEASED", "RELEASE_FAILED")
        )
        + (
            " (FAILED: " + ", ".join(f"{code} {n}" for code, n in failed.most_common()) + ")"
            if failed
            else ""
        )
        + f"; {isolated} instances isolated",
        f"worker: {sum(chaos.runs.values())} runs, {retried} retried through the queue, "
        f"{chaos.runs['crashed']} crashed; {len(records)} records; {dlq} messages in the DLQ",
        _release_figures(releases, records, as_before, mid_episode),
    ]
    if unrecorded:
        lines.append(
            "changes in place whose outcome no record has, each planned on record before it was made (the "
            "outcome lost to a crash or a failed write): "
            + ", ".join(f"{step} {n}" for step, n in sorted(unrecorded.items()))
        )
    return [f"chaos: {line}" for line in lines]


def _release_figures(
    releases: list[Release], records: dict[str, dict[str, Any]], as_before: int, mid_episode: int
) -> str:
    answered = Counter(release.http_status for release in releases if release.http_status is not None)
    ended = Counter(
        records[r.isolation_id]["status"] for r in releases if r.http_status == 202 and r.isolation_id
    )
    not_asked = Counter(release.not_asked for release in releases if release.not_asked)
    return (
        f"releases: {len(releases)} instances, "
        + ", ".join(f"{status} x{n}" for status, n in sorted(answered.items()))
        + (
            " (not asked: " + ", ".join(f"{why} x{n}" for why, n in not_asked.items()) + ")"
            if not_asked
            else ""
        )
        + "; "
        + ", ".join(f"{status} {n}" for status, n in sorted(ended.items()))
        + f" ({sum(r.asked_again for r in releases)} asked again after RELEASE_FAILED); "
        f"{sum(r.retrigger_event is not None for r in releases)} isolated again by a finding after their "
        f"release; {as_before} released instances as they were before their isolation"
        + (
            f", {mid_episode} as the prior state their record took mid-episode (an earlier isolation had "
            "changed the instance and failed before its tag)"
            if mid_episode
            else ""
        )
    )


def _prior_as_observed(prior: dict[str, Any]) -> dict[str, Any]:
    """What a record's `prior_state` says, in `observed_state`'s terms (the fields it holds)."""
    said: dict[str, Any] = {}
    if prior.get("network_interfaces"):
        said["security groups"] = {
            eni["id"]: sorted(eni["security_group_ids"]) for eni in prior["network_interfaces"]
        }
    if "instance_profile_arn" in prior:
        said["instance profile"] = [prior["instance_profile_arn"]] if prior["instance_profile_arn"] else []
    if prior.get("volumes"):
        said["delete on termination"] = {v["id"]: v["delete_on_termination"] for v in prior["volumes"]}
    for field_name, what in (
        ("shutdown_behavior", "shutdown behaviour"),
        ("termination_protection", "termination protection"),
        ("stop_protection", "stop protection"),
    ):
        if prior.get(field_name) is not None:
            said[what] = prior[field_name]
    return said
