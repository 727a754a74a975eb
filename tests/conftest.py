"""Fixtures shared by the unit and integration suites: moto in-process, the stack's own resources built
from template.yaml, member accounts, fault injection."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import loaders
from botocore import session as botocore_session
from moto import mock_aws

from local_stack.embedded import serialized
from local_stack.event_source import delete_successes, failed_ids
from local_stack.provision import provision
from local_stack.templates import load_template, sam_transform
from shared import aws
from shared.config import ingest_settings, sweeper_settings, worker_settings
from shared.store import IsolationStore
from tests.support.aws import Faults, Member
from tests.support.events import api_event, lambda_context, sqs_event

ROOT = Path(__file__).resolve().parent.parent
STACK_REGION = "us-east-1"
SECURITY_ACCOUNT = "123456789012"
MEMBER_ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
MEMBER_REGION = "eu-west-1"


#: Where tests leave their figures: a directory shared by the run's processes (pytest-xdist workers
#: inherit it from the controller's environment), read back by the controller at the end.
_FIGURES_DIR = "EC2_ISOLATION_TEST_FIGURES"


def pytest_configure(config: Any) -> None:
    if not hasattr(config, "workerinput"):
        os.environ[_FIGURES_DIR] = tempfile.mkdtemp(prefix="ec2-isolation-figures-")


@pytest.fixture
def figures() -> Any:
    """`figures(title, text)`: printed at the end of the run (docs/architecture.md says what they hold)."""

    def add(title: str, text: str) -> None:
        with (Path(os.environ[_FIGURES_DIR]) / f"{os.getpid()}.jsonl").open("a") as out:
            out.write(json.dumps([title, text]) + "\n")

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    folder = os.environ.get(_FIGURES_DIR)
    if not folder or hasattr(terminalreporter.config, "workerinput"):
        return
    found = [
        tuple(json.loads(line))
        for path in sorted(Path(folder).glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    for title in dict.fromkeys(title for title, _ in found):
        terminalreporter.write_sep("-", title)
        for text in (text for named, text in found if named == title):
            terminalreporter.write_line(text)


@pytest.fixture(scope="session", autouse=True)
def _one_model_loader() -> Iterator[None]:
    """Every botocore session of a test process reads the service models once. moto gives each test a
    new default session, whose loader would read and parse them again (a fifth of a stack's set-up)."""
    shared = loaders.create_loader()
    made = botocore_session.create_loader

    def create_loader(search_paths: str | None = None) -> Any:
        return shared if search_paths is None else made(search_paths)

    botocore_session.create_loader = create_loader
    yield
    botocore_session.create_loader = made


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """template.yaml after the SAM transform, as the local stack deploys it."""
    return sam_transform(load_template(ROOT / "template.yaml"))


@pytest.fixture(scope="session", autouse=True)
def _few_managed_policies() -> Iterator[None]:
    """moto parses its ~1,000 AWS managed policies for every account it creates (about 0.1 s each);
    the service only needs AWSDenyAll, so the tests give moto just the policies they use."""
    import moto.iam.models as iam_models

    full = iam_models.aws_managed_policies_data
    wanted = {"AWSDenyAll", "AmazonS3ReadOnlyAccess", "AdministratorAccess"}
    iam_models.aws_managed_policies_data = json.dumps(
        {name: body for name, body in json.loads(full).items() if name in wanted}
    )
    yield
    iam_models.aws_managed_policies_data = full


@pytest.fixture(autouse=True)
def _aws_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "MOTO_ACCOUNT_ID", "AWS_ENDPOINT_URL", "ALLOWED_ACCOUNT_IDS", "EXTERNAL_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", STACK_REGION)
    monkeypatch.setenv("AWS_REGION", STACK_REGION)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Ec2Isolation")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ec2-isolation")
    yield
    _forget_everything()


def _forget_everything() -> None:
    from shared.store import accounts, episodes, isolation_groups
    from worker.steps import forget_caches

    ingest_settings.cache_clear()
    worker_settings.cache_clear()
    sweeper_settings.cache_clear()
    aws.reset_caches()
    forget_caches()
    # Process-wide notes keyed by table or account name: the next test's table has the same name.
    episodes.forget_backfilled()
    isolation_groups.forget_adopted()
    accounts.forget_noted()


@pytest.fixture
def faults() -> Iterator[Faults]:
    injected = Faults()
    yield injected
    injected.clear()


def one_request_at_a_time(monkeypatch: pytest.MonkeyPatch, handler: Any) -> None:
    """moto answers the requests `handler` (a moto response class) serves one at a time, as if each were
    atomic (AWS's own guarantee for a single request): moto is not safe under concurrent requests."""
    monkeypatch.setattr(handler, "call_action", serialized(handler.call_action))


@pytest.fixture
def serial_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that run workers concurrently: two conditional writes racing in moto's DynamoDB can both
    pass, and a cancelled TransactWriteItems puts back a copy of the whole table taken when it started."""
    from moto.dynamodb.responses import DynamoHandler

    one_request_at_a_time(monkeypatch, DynamoHandler)


@pytest.fixture(autouse=True, scope="session")
def _patterns_as_aws_matches_them() -> Iterator[None]:
    """EventBridge matches the fields of arrays of objects (a CloudTrail `tagSet.items[].key`); moto's
    matcher does not: every suite matches as AWS does, as the local stack does."""
    from local_stack.embedded import patterns_match_arrays_of_objects

    restore = patterns_match_arrays_of_objects()
    yield
    restore()


@pytest.fixture(autouse=True, scope="session")
def _iam_limits_as_aws_enforces_them() -> Iterator[None]:
    """IAM refuses a role's inline policy past its limit on the role's inline policies (LimitExceeded);
    moto does not: every suite refuses it as AWS does, as the local stack does."""
    from local_stack.iam_limits import inline_policy_limit_enforced

    restore = inline_policy_limit_enforced()
    yield
    restore()


@pytest.fixture
def aws_mock() -> Iterator[None]:
    """moto in-process, with AWS managed policies (AWSDenyAll exists in every real account)."""
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        _forget_everything()
        yield


@dataclass
class Stack:
    """The security account's side: table, queues and DLQs as template.yaml declares them."""

    table_name: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    follow_up_url: str
    follow_up_arn: str
    follow_up_dlq_url: str
    sqs: Any
    store: IsolationStore
    max_receive_count: int
    outcomes_url: str
    #: Failed messages waiting out their retry delay: (queue url, message).
    retrying: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def outcomes(self) -> list[dict[str, Any]]:
        """The outcome events published on the stack's bus so far (a rule on it feeds a test queue)."""
        events = []
        while messages := self.sqs.receive_message(QueueUrl=self.outcomes_url, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                events.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.outcomes_url, ReceiptHandle=message["ReceiptHandle"])
        return events

    def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        from ingest.app import lambda_handler

        response = lambda_handler(api_event(method, path, **kwargs), lambda_context())
        return response["statusCode"], json.loads(response["body"]) if response["body"] else {}

    def receive(self, *, wait: bool = False, follow_up: bool = False) -> list[dict[str, Any]]:
        return self.sqs.receive_message(
            QueueUrl=self.follow_up_url if follow_up else self.queue_url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            WaitTimeSeconds=1 if wait else 0,
        ).get("Messages", [])

    def queued(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def dead_letters(self, *, follow_up: bool = False) -> list[dict[str, Any]]:
        url = self.follow_up_dlq_url if follow_up else self.dlq_url
        return self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])

    def redrive(self, message: dict[str, Any], *, follow_up: bool = False) -> None:
        """A DLQ message sent back to its source queue, as an operator's redrive does."""
        url = self.follow_up_url if follow_up else self.queue_url
        self.sqs.send_message(QueueUrl=url, MessageBody=message["Body"])

    def send(self, body: dict[str, Any] | str) -> None:
        self.sqs.send_message(
            QueueUrl=self.queue_url, MessageBody=body if isinstance(body, str) else json.dumps(body)
        )

    def work(self, messages: list[dict[str, Any]] | None = None, *, follow_up: bool = True) -> dict[str, Any]:
        """One invocation of the worker with what the queue gives (or `messages`), then what Lambda's
        event source mapping does: delete the successes, leave the failures. Then (`follow_up`) the
        follow-up function on what its queue gives, until it gives nothing."""
        from worker.app import lambda_handler

        batch = self.receive() if messages is None else messages
        response = self._invoke(lambda_handler, batch, self.queue_url, self.queue_arn)
        if follow_up:
            self.follow_up()
        return response

    def follow_up(
        self, messages: list[dict[str, Any]] | None = None, *, rounds: int = 10
    ) -> list[dict[str, Any]]:
        """Invocations of the follow-up function with what its queue gives (or `messages`, once)."""
        from worker.app import follow_up_handler

        responses = []
        for _ in range(1 if messages is not None else rounds):
            batch = self.receive(follow_up=True) if messages is None else messages
            if not batch:
                break
            responses.append(self._invoke(follow_up_handler, batch, self.follow_up_url, self.follow_up_arn))
        return responses

    def _invoke(self, handler: Any, batch: list[dict[str, Any]], url: str, arn: str) -> dict[str, Any]:
        if not batch:
            return {"batchItemFailures": []}
        try:
            response = handler(sqs_event(batch, arn), lambda_context())
        except Exception:  # an invocation error: the whole batch comes back
            self.retrying.extend((url, m) for m in batch)
            return {"batchItemFailures": [{"itemIdentifier": m["MessageId"]} for m in batch], "raised": True}
        failed = failed_ids(response, [m["MessageId"] for m in batch])
        self.retrying.extend((url, m) for m in batch if m["MessageId"] in failed)
        delete_successes(self.sqs, url, batch, failed)
        return dict(response)

    def sweep(self) -> dict[str, Any]:
        """One run of the scheduled sweeper."""
        from sweeper.app import lambda_handler

        return dict(lambda_handler({}, lambda_context()))

    def let_time_pass(self) -> None:
        """The retry delays the worker set on failed messages are over: they are visible again."""
        for url, message in self.retrying:
            with contextlib.suppress(self.sqs.exceptions.ClientError):  # moved to the DLQ or deleted
                self.sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
        self.retrying.clear()

    def drain(self, *, rounds: int = 10) -> list[dict[str, Any]]:
        """Run the worker and the follow-up function until both queues are empty, letting retry delays
        pass at once."""
        responses = []
        for _ in range(rounds):
            batch = self.receive()
            follow_ups = self.follow_up(rounds=1)
            if not batch and not follow_ups:
                break
            if batch:
                responses.append(self.work(batch))
            self.let_time_pass()
        return responses


def build_stack(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, **env: str) -> Stack:
    """The stack's queues and table deployed from the template as the local stack does, and the
    worker's settings that point at them."""
    provisioned = provision(
        template,
        client=lambda service: boto3.client(service, region_name=STACK_REGION),
        stack_name="ec2-isolation-test",
    )
    declared = provisioned.environment()
    sqs = boto3.client("sqs", region_name=STACK_REGION)
    outcomes_url = _outcome_listener(sqs)
    settings = {
        **{
            name: declared[name]
            for name in (
                "TABLE_NAME",
                "QUEUE_URL",
                "FOLLOW_UP_QUEUE_URL",
                "TARGET_ROLE_NAME",
                "EXEMPTION_TABLE_NAME",
                "MAX_RECEIVE_COUNT",
                "TAMPER_DEAD_LETTER_QUEUE_URL",
            )
        },
        "DEAD_LETTER_QUEUE_URL": provisioned.dead_letter_queue_url,
        "FOLLOW_UP_DEAD_LETTER_QUEUE_URL": provisioned.follow_up_dead_letter_queue_url,
        "EVENT_BUS_NAME": "ec2-isolation-test",
        "CONSISTENCY_WAIT_SECONDS": "2",
        **env,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    _forget_everything()
    return Stack(
        table_name=provisioned.table_name,
        queue_url=provisioned.queue_url,
        queue_arn=provisioned.queue_arn,
        dlq_url=provisioned.dead_letter_queue_url,
        follow_up_url=provisioned.follow_up_queue_url,
        follow_up_arn=provisioned.follow_up_queue_arn,
        follow_up_dlq_url=provisioned.follow_up_dead_letter_queue_url,
        sqs=sqs,
        store=IsolationStore(
            provisioned.table_name, client=boto3.client("dynamodb", region_name=STACK_REGION)
        ),
        max_receive_count=provisioned.max_receive_count,
        outcomes_url=outcomes_url,
    )


def _outcome_listener(sqs: Any) -> str:
    """The stack's bus, with a rule sending every outcome event to a queue the tests read."""
    events = boto3.client("events", region_name=STACK_REGION)
    events.create_event_bus(Name="ec2-isolation-test")
    url = sqs.create_queue(QueueName="ec2-isolation-outcomes")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="outcomes",
        EventBusName="ec2-isolation-test",
        EventPattern=json.dumps({"source": ["ec2-isolation"], "detail-type": ["EC2 Isolation Outcome"]}),
    )
    events.put_targets(Rule="outcomes", EventBusName="ec2-isolation-test", Targets=[{"Id": "q", "Arn": arn}])
    return str(url)


@pytest.fixture
def stack(
    aws_mock: None, template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, serial_dynamodb: None
) -> Stack:
    """(The worker writes a batch's records from several threads: moto's DynamoDB answers them one at a
    time, as AWS makes each request atomic.)"""
    return build_stack(template, monkeypatch)


@pytest.fixture
def member(aws_mock: None) -> Member:
    """A member account as the StackSet leaves it: the isolation role and profile exist."""
    account = Member(MEMBER_ACCOUNT, MEMBER_REGION)
    account.install_isolation_profile()
    return account


@pytest.fixture
def other_member(aws_mock: None) -> Member:
    """A second member account, in another region."""
    account = Member(OTHER_ACCOUNT, "us-east-2")
    account.install_isolation_profile()
    return account


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff waits are recorded, not slept, in unit and integration tests."""
    slept: list[float] = []
    monkeypatch.setattr("worker.consistency.pause", slept.append)
    return slept
