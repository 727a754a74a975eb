"""The local stack's Lambda model: batches of the mapping's batch size, at most its maximum concurrency
of execution environments at once, each a process with its own module state; an environment that dies
or overruns its timeout returns its whole batch and is replaced. The queue here is an in-memory fake
(the SQS side is tested against moto in tests/e2e/test_local_stack.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from local_stack.environments import EnvironmentDied, FunctionCode, Processes
from local_stack.event_source import BatchOutcome, SqsEventSource
from local_stack.lambda_context import LambdaContext

pytestmark = pytest.mark.timeout(120)

HANDLER = "tests.support.lambda_functions.handler"


class FakeQueue:
    """Just what the event source calls: ReceiveMessage (up to the asked number, each message once until
    it is deleted or put back) and DeleteMessageBatch."""

    def __init__(self, bodies: list[str]) -> None:
        self.visible = [
            {"MessageId": f"m-{i}", "ReceiptHandle": f"r-{i}", "Body": b} for i, b in enumerate(bodies)
        ]
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self._lock = threading.Lock()

    def receive_message(
        self, *, MaxNumberOfMessages: int, WaitTimeSeconds: int = 0, **_: Any
    ) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            batch, self.visible = self.visible[:MaxNumberOfMessages], self.visible[MaxNumberOfMessages:]
            self.in_flight.update({m["ReceiptHandle"]: m for m in batch})
        if not batch:
            time.sleep(min(WaitTimeSeconds, 0.05))
        return {"Messages": batch}

    def delete_message_batch(self, *, Entries: list[dict[str, str]], **_: Any) -> dict[str, Any]:  # noqa: N803
        with self._lock:
            for entry in Entries:
                self.deleted.append(self.in_flight.pop(entry["ReceiptHandle"])["MessageId"])
        return {"Successful": Entries, "Failed": []}


def code(**environment: str) -> FunctionCode:
    return FunctionCode(HANDLER, environment=environment, count_calls=False)


def context(timeout: float = 30) -> LambdaContext:
    return LambdaContext(
        function_name="test-fn", timeout_seconds=timeout, region="eu-west-1", account_id="123456789012"
    )


def source(queue: FakeQueue, runtime: Processes, *, batch_size: int, concurrency: int) -> SqsEventSource:
    return SqsEventSource(
        sqs_factory=lambda: queue,
        handler=runtime,
        queue_url="https://sqs.local/q",
        queue_arn="arn:aws:sqs:eu-west-1:123456789012:q",
        region="eu-west-1",
        account_id="123456789012",
        function_name="test-fn",
        timeout_seconds=5,
        batch_size=batch_size,
        concurrency=concurrency,
    )


@pytest.fixture
def runtimes() -> Iterator[list[Processes]]:
    made: list[Processes] = []
    yield made
    for runtime in made:
        runtime.close()


def test_batches_of_the_batch_size_in_at_most_maximum_concurrency_environments(
    runtimes: list[Processes],
) -> None:
    # Given 25 messages, a mapping of batch size 4 and maximum concurrency 2 (three pollers asking, to
    # see the environments' own cap), invocations that take a while
    queue = FakeQueue([f"body-{i}" for i in range(25)])
    runtime = Processes(code(TEST_HANDLER_SECONDS="0.2"), limit=2)
    runtimes.append(runtime)
    mapping = source(queue, runtime, batch_size=4, concurrency=3)
    outcomes: list[BatchOutcome] = []
    mapping.observers.append(outcomes.append)

    # When its pollers run until the queue is drained
    mapping.start()
    deadline = time.monotonic() + 90
    while len(queue.deleted) < 25 and time.monotonic() < deadline:
        time.sleep(0.05)
    mapping.stop()

    # Then every message was handled once, in batches of at most 4 (full ones while the queue had them)
    assert sorted(queue.deleted) == sorted(f"m-{i}" for i in range(25))
    results = [outcome.invocation.result for outcome in outcomes if outcome.invocation]
    assert len(results) == len(outcomes)
    assert sorted(result["records"] for result in results) == [1] + [4] * 6
    # and never more than 2 invocations at once, in 2 environments (processes) at most
    moments = sorted([(r["started"], 1) for r in results] + [(r["ended"], -1) for r in results])
    running = peak = 0
    for _, change in moments:
        running += change
        peak = max(peak, running)
    assert peak == 2
    assert len({result["pid"] for result in results}) == 2 == runtime.started


def _at_once(runtime: Processes, event: dict[str, Any], count: int) -> list[Any]:
    """`count` invocations of `event` at once: their invocations, in the order they ended."""
    ended: list[Any] = []
    threads = [
        threading.Thread(target=lambda: ended.append(runtime.invoke(event, context()))) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ended


def test_module_state_belongs_to_one_environment(runtimes: list[Processes]) -> None:
    # Given a function allowed two environments
    runtime = Processes(code(TEST_HANDLER_SECONDS="0.3"), limit=2)
    runtimes.append(runtime)
    event = {"Records": [{"body": "x"}]}

    # When it is invoked once, then twice at once
    first = runtime.invoke(event, context())
    concurrent = _at_once(runtime, event, 2)

    # Then the first environment was reused warm (its module state carried on) and a second one started
    # cold, with module state of its own
    assert first.cold and first.result["invocations"] == 1
    by_pid = {invocation.environment: invocation for invocation in concurrent}
    assert len(by_pid) == 2
    warm = by_pid[first.environment]
    (cold,) = (invocation for pid, invocation in by_pid.items() if pid != first.environment)
    assert not warm.cold and warm.result["invocations"] == 2
    assert cold.cold and cold.result["invocations"] == 1 and cold.init_seconds > 0
    assert {first.result["function"], cold.result["function"]} == {"test-fn"}


def test_an_environment_knows_why_it_was_initialized_as_in_lambda(runtimes: list[Processes]) -> None:
    # Given a function with one environment started ahead of any invocation (provisioned concurrency)
    runtime = Processes(code(TEST_HANDLER_SECONDS="0.3"), limit=2)
    runtimes.append(runtime)
    runtime.warm(1)
    event = {"Records": [{"body": "x"}]}

    # When two invocations come at once (the second starts an environment on demand)
    concurrent = _at_once(runtime, event, 2)

    # Then each environment's init saw Lambda's AWS_LAMBDA_INITIALIZATION_TYPE for how it started
    by_start = {invocation.cold: invocation.result["initialization"] for invocation in concurrent}
    assert by_start == {False: "provisioned-concurrency", True: "on-demand"}


@pytest.mark.parametrize("body", ["die", "sleep"], ids=["killed", "timed-out"])
def test_a_dead_environment_returns_its_whole_batch_and_is_replaced(
    runtimes: list[Processes], body: str
) -> None:
    # Given a batch in which one message kills its environment (or keeps it past the function's timeout)
    queue = FakeQueue(["ok-1", body, "ok-2"])
    runtime = Processes(code(), limit=1)
    runtimes.append(runtime)
    mapping = source(queue, runtime, batch_size=10, concurrency=1)
    mapping.timeout_seconds = 1

    # When the batch is handled
    outcome = mapping.poll_once()

    # Then the whole batch is left on the queue, the messages that went well included
    assert outcome is not None and outcome.invocation is None
    assert outcome.error and ("environment died" in outcome.error or "timed out" in outcome.error)
    assert outcome.failed == {"m-0", "m-1", "m-2"} and queue.deleted == []
    assert runtime.alive == 0
    # and the next invocation gets a new environment, with fresh module state
    fresh = runtime.invoke({"Records": [{"body": "ok"}]}, context())
    assert fresh.cold and fresh.result["invocations"] == 1


def test_a_handler_error_fails_the_batch_and_keeps_the_environment(runtimes: list[Processes]) -> None:
    # Given an environment that has run one invocation
    runtime = Processes(code(), limit=1)
    runtimes.append(runtime)
    first = runtime.invoke({"Records": [{"body": "ok"}]}, context())

    # When the handler raises, then runs again
    queue = FakeQueue(["raise"])
    outcome = source(queue, runtime, batch_size=10, concurrency=1).poll_once()
    again = runtime.invoke({"Records": [{"body": "ok"}]}, context())

    # Then the batch failed as a whole, and the environment lived on (warm, its state kept)
    assert (
        outcome is not None
        and outcome.failed == {"m-0"}
        and "RuntimeError: asked to raise" in str(outcome.error)
    )
    assert again.environment == first.environment and not again.cold and again.result["invocations"] == 3


def test_closed_environments_take_no_more_invocations(runtimes: list[Processes]) -> None:
    # Given a function's environments, closed
    runtime = Processes(code(), limit=1)
    runtime.warm(1)
    runtime.close()

    # Then nothing runs any more, and no process is left
    with pytest.raises(EnvironmentDied):
        runtime.invoke({"Records": []}, context())
    assert runtime.alive == 0
