"""The containment of a whole batch, phase by phase, every isolation of a phase at once (threads).

1. open every message's record (a trigger's is written now; joins, coalescing, the blast radius);
2. describe the batch's instances: one AssumeRole (cached) and one DescribeInstances per account and
   region (and, at once, the region's isolation groups, when the environment knows none there yet, and
   each instance's episode, from the service's own table);
3. begin each: the prior state written before any change;
4. cut every interface of every instance (the isolation group of each VPC found or created once) and
   write each record's `contained_at`;
5. then, every instance being cut, the next steps planned and their plans written in one write
   (the instance's role, Auto Scaling group and load balancers), the credentials deny and the Auto
   Scaling and load balancer detach side by side, each record handed over to its follow-up phase as
   soon as both are done; then one message per isolation on the follow-up queue (one SendMessageBatch
   per ten).

An isolation whose phase raises leaves the later phases (the others go on); its exception is settled by
`Attempt.settle` at the end, so one message of a batch never fails another. An exception that is not an
`Exception` (the environment dying) stops the invocation, as in Lambda.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby

from shared.aws import same_account_client
from shared.errors import PermanentError, RetryableError
from shared.models import FollowUpMessage, Target
from shared.observability import logger
from shared.store.isolation_groups import GroupClaim
from worker.at_once import both_at_once, each_at_once
from worker.instance import describe_many
from worker.procedures import HOLD
from worker.receive import Outcome, WorkerDeps
from worker.runner import Attempt
from worker.steps import network

#: SendMessageBatch takes at most ten messages.
SQS_BATCH = 10


def contain_one(attempt: Attempt) -> Outcome:
    """The whole containment of one isolation, a batch of one: its outcome, or the error its message
    fails with (already recorded)."""
    [outcome] = contain([attempt], attempt.deps)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def contain(attempts: Sequence[Attempt], deps: WorkerDeps) -> list[Outcome | Exception]:
    """Contain every isolation of the batch; each attempt's outcome, or the error its message fails
    with (already recorded: `Attempt.settle`)."""
    results: dict[int, Outcome | Exception] = {}
    settled: dict[int, Outcome | Exception] = {}

    def settle_the_fallen() -> None:
        # An isolation that left the batch is settled at once, not at the batch's end: if the environment
        # dies later in the batch (which returns every message of it), its outcome is on record already.
        for attempt in attempts:
            if id(attempt) in results and id(attempt) not in settled:
                settled[id(attempt)] = _settled(attempt, results[id(attempt)])

    live = list(attempts)
    for phase in (
        lambda going: _each(going, results, lambda attempt: attempt.open()),
        lambda going: _describe(going, results, deps),
        lambda going: _each(going, results, lambda attempt: attempt.begin()),
        lambda going: _each(going, results, lambda attempt: attempt.contain()),
        lambda going: _each(going, results, lambda attempt: attempt.plan_hold()),
        lambda going: _hold(going, results),
    ):
        live = phase(live)
        settle_the_fallen()
    _send_follow_ups(live, results, deps)
    for attempt in live:
        results.setdefault(id(attempt), Outcome.CONTAINED)
    settle_the_fallen()
    return [settled[id(attempt)] for attempt in attempts]


def _settled(attempt: Attempt, result: Outcome | Exception) -> Outcome | Exception:
    with attempt.acting():
        if isinstance(result, Outcome):
            return attempt.conclude(result)
        try:
            return attempt.settle(result)
        except Exception as error:
            return error


def _each(
    attempts: list[Attempt],
    results: dict[int, Outcome | Exception],
    phase: Callable[[Attempt], Outcome | None],
    *,
    together: Callable[[Attempt], object] = id,
) -> list[Attempt]:
    """Run `phase` for every attempt at once (attempts with the same `together` key one after another,
    in one thread); the attempts that go on to the next phase."""

    def run(group: list[Attempt]) -> list[Outcome | Exception | None]:
        ran: list[Outcome | Exception | None] = []
        for attempt in group:
            with attempt.acting():
                try:
                    ran.append(phase(attempt))
                except Exception as exc:
                    ran.append(exc)
        return ran

    groups: dict[object, list[Attempt]] = {}
    for attempt in attempts:
        groups.setdefault(together(attempt), []).append(attempt)
    outcomes: dict[int, object] = {}
    for group, ran in zip(groups.values(), each_at_once(run, list(groups.values())), strict=True):
        assert isinstance(ran, list)
        outcomes.update((id(attempt), result) for attempt, result in zip(group, ran, strict=True))
    going = []
    for attempt in attempts:
        result = outcomes[id(attempt)]
        if result is None:
            going.append(attempt)
        else:
            assert isinstance(result, Outcome | Exception)
            results[id(attempt)] = result
    return going


def _hold(attempts: list[Attempt], results: dict[int, Outcome | Exception]) -> list[Attempt]:
    """The steps of `HOLD` side by side, each across the batch at once: they call different services
    (IAM; Auto Scaling and ELB), so the slowest alone sets how long the environment holds the batch
    before the next one. The last of an attempt's steps to end hands its record over (`Attempt.hold`).
    An attempt one of them failed goes no further (the first step's error first)."""
    found: list[dict[int, Outcome | Exception]] = [{} for _ in HOLD.steps]

    def track(index: int) -> None:
        step = HOLD.steps[index]
        # Instances of one role take turns on its deny policy (one after another, not waiting on each other).
        together: Callable[[Attempt], object] = (lambda a: a.role_key) if step.one_writer_per_role else id
        _each(attempts, found[index], lambda attempt: attempt.hold(step), together=together)

    each_at_once(track, list(range(len(HOLD.steps))))
    for track_results in found:
        for key, result in track_results.items():
            results.setdefault(key, result)
    return [attempt for attempt in attempts if id(attempt) not in results]


def _describe(
    attempts: list[Attempt], results: dict[int, Outcome | Exception], deps: WorkerDeps
) -> list[Attempt]:
    """The role assumed and the instances described once per account and region; meanwhile each
    instance's episode is looked up in the service's own table (it depends on nothing described)."""
    for attempt in attempts:
        attempt.look_up_episode()

    def key(attempt: Attempt) -> tuple[str, str]:
        return attempt.record.account_id, attempt.record.region

    groups = [list(group) for _, group in groupby(sorted(attempts, key=key), key=key)]

    def describe_group(group: list[Attempt]) -> None:
        target = group[0].record.target
        try:
            with group[0].acting():  # (one call for the group: its errors are every attempt's)
                account = deps.session(target)
                ec2 = account.client("ec2")
                found, groups_seen = both_at_once(
                    lambda: describe_many(ec2, [attempt.record.target for attempt in group]),
                    lambda: _look_ahead(deps, target),
                )
        except Exception as exc:
            for attempt in group:
                results[id(attempt)] = exc
            return
        for attempt in group:
            instance = found[attempt.record.instance_id]
            if isinstance(instance, PermanentError):
                results[id(attempt)] = instance
            else:
                attempt.described(account, instance, groups_seen)

    each_at_once(describe_group, groups)
    return [attempt for attempt in attempts if id(attempt) not in results]


def _look_ahead(deps: WorkerDeps, target: Target) -> dict[str, GroupClaim] | None:
    """The region's isolation groups as the service's table names them, read while the instances are
    described, when this environment knows none of the account and region yet (None otherwise, or when
    the read failed: the step then reads them itself). A new environment also learns then whether an
    earlier version's groups are adopted, which a claim would otherwise read on the cut's path."""
    if network.knows_groups_of(target.account_id, target.region):
        return None
    try:
        deps.store.adopted_everywhere()
        return deps.store.group_claims(target.account_id, target.region)
    except Exception as exc:
        logger.warning("isolation groups not looked up ahead", extra={"error": str(exc)})
        return None


def _send_follow_ups(
    attempts: list[Attempt], results: dict[int, Outcome | Exception], deps: WorkerDeps
) -> None:
    """One message per handed-over isolation on the follow-up queue. One that cannot be sent fails its
    attempt (retryable): the message comes back and the containment, all `already`, hands over again."""
    sqs = same_account_client("sqs")
    for start in range(0, len(attempts), SQS_BATCH):
        chunk = attempts[start : start + SQS_BATCH]
        entries = [
            {"Id": str(i), "MessageBody": FollowUpMessage.of(attempt.record).model_dump_json()}
            for i, attempt in enumerate(chunk)
        ]
        try:
            answer = sqs.send_message_batch(QueueUrl=deps.settings.FOLLOW_UP_QUEUE_URL, Entries=entries)
        except Exception as exc:
            for attempt in chunk:
                results[id(attempt)] = exc
            continue
        for failure in answer.get("Failed", []):
            results[id(chunk[int(failure["Id"])])] = RetryableError(
                "FollowUpNotQueued",
                f"the follow-up could not be queued: {failure.get('Code')} {failure.get('Message', '')}".strip(),
            )
