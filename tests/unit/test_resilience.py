"""The tricky parts on their own: error classification, bounded consistency waits, session caching."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber

from shared import aws, errors
from shared.errors import PermanentError, RetryableError
from worker.consistency import WaitedOut, until_consistent, wait_for


def error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    "code,status",
    [
        ("RequestLimitExceeded", 503),
        ("Throttling", 400),
        ("ThrottlingException", 400),
        ("InternalError", 500),
        ("ServiceUnavailable", 503),
        ("SomethingNew", 502),
        ("ExpiredToken", 400),
    ],
)
def test_transient_errors_are_retryable(code: str, status: int) -> None:
    assert isinstance(errors.classify(error(code, status)), RetryableError)


@pytest.mark.parametrize(
    "code",
    [
        "AccessDenied",
        "UnauthorizedOperation",
        "InvalidInstanceID.NotFound",
        "IncorrectInstanceState",
        "AuthFailure",
    ],
)
def test_client_errors_are_permanent(code: str) -> None:
    classified = errors.classify(error(code, 400))
    assert isinstance(classified, PermanentError) and classified.code == code


def test_permanent_code_can_be_renamed_and_keeps_the_aws_code_in_the_message() -> None:
    classified = errors.classify(
        error("AccessDenied", 403), permanent_code="RoleNotAssumable", context="assume x"
    )
    assert classified.code == "RoleNotAssumable"
    assert "AccessDenied" in classified.message and "assume x" in classified.message


def test_network_errors_are_retryable() -> None:
    assert isinstance(errors.classify(EndpointConnectionError(endpoint_url="https://ec2")), RetryableError)


def test_consistency_wait_is_bounded_and_backs_off() -> None:
    # Given a call that fails with a consistency code every time
    slept: list[float] = []
    calls = 0

    def never() -> None:
        nonlocal calls
        calls += 1
        raise error("InvalidParameterValue")

    # When it is waited for with a 5 s budget
    with pytest.raises(RetryableError) as raised:
        until_consistent(
            never, codes=frozenset({"InvalidParameterValue"}), budget_seconds=5, sleep=slept.append, what="x"
        )

    # Then the waits double, stay within the budget, and the retry goes to the queue with a delay hint
    assert slept == [0.25, 0.5, 1.0, 2.0]
    assert sum(slept) <= 5 and calls == 5
    assert raised.value.wait == "consistency"


def test_consistency_wait_passes_other_errors_through_at_once() -> None:
    slept: list[float] = []

    def denied() -> None:
        raise error("AccessDenied")

    with pytest.raises(ClientError):
        until_consistent(
            denied, codes=frozenset({"InvalidParameterValue"}), budget_seconds=5, sleep=slept.append, what="x"
        )
    assert slept == []


def _credentials(expires_in: float) -> dict[str, Any]:
    return {
        "Credentials": {
            "AccessKeyId": "ASIAEXAMPLEEXAMPLE12",
            "SecretAccessKey": "secret",
            "SessionToken": "token",
            "Expiration": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in),
        }
    }


def test_assumed_sessions_are_cached_until_shortly_before_expiry() -> None:
    # Given STS, stubbed, and a cold cache
    aws.reset_caches()
    base = boto3.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1")
    sts = base.client("sts")
    params = {
        "RoleArn": "arn:aws:iam::111122223333:role/ec2-isolation-execution",
        "RoleSessionName": "ec2-isolation-worker",
        "DurationSeconds": 3600,
        "ExternalId": "x-1",
    }
    with Stubber(sts) as stub:
        stub.add_response("assume_role", _credentials(3600), expected_params=params)
        stub.add_response("assume_role", _credentials(3600), expected_params=params)
        # When the same account is asked for twice
        first = aws.session_for_account(
            "111122223333", "eu-west-1", "ec2-isolation-execution", external_id="x-1", sts=sts
        )
        second = aws.session_for_account(
            "111122223333", "eu-west-1", "ec2-isolation-execution", external_id="x-1", sts=sts
        )
        # Then STS was called once (with the ExternalId)
        assert first is second
        assert len(stub._queue) == 1
        # And when the credentials are about to expire, they are renewed
        first.expires_at = dt.datetime.now(dt.UTC).timestamp() + 60
        third = aws.session_for_account(
            "111122223333", "eu-west-1", "ec2-isolation-execution", external_id="x-1", sts=sts
        )
        assert third is not first
        stub.assert_no_pending_responses()


def test_the_first_assume_role_of_a_process_loads_the_ec2_client_meanwhile() -> None:
    # Given a fresh process (no client prepared), and STS that notes which threads run while it answers
    aws.reset_caches()
    running: list[set[str]] = []

    class Sts:
        def assume_role(self, **_: Any) -> dict[str, Any]:
            running.append({thread.name for thread in threading.enumerate()})
            return _credentials(3600)

    # When two accounts are assumed, one after the other
    aws.session_for_account("111122223333", "eu-west-1", "ec2-isolation-execution", sts=Sts())
    aws.session_for_account("444455556666", "eu-west-1", "ec2-isolation-execution", sts=Sts())

    # Then the EC2 client was prepared while the first answered, and only then (once per process)
    assert "prepare-ec2" in running[0]
    assert "prepare-ec2" not in running[1]
    assert "ec2" in aws._prepared


def test_assume_role_denied_is_permanent_role_not_assumable() -> None:
    aws.reset_caches()
    base = boto3.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1")
    sts = base.client("sts")
    with Stubber(sts) as stub:
        stub.add_client_error("assume_role", "AccessDenied", http_status_code=403)
        with pytest.raises(PermanentError) as raised:
            aws.session_for_account("111122223333", "eu-west-1", "ec2-isolation-execution", sts=sts)
    assert raised.value.code == "RoleNotAssumable"
    assert "arn:aws:iam::111122223333:role/ec2-isolation-execution" in raised.value.message


def test_retry_delays_come_from_the_settings() -> None:
    from shared.config import WorkerSettings
    from worker.sqs_batch import retry_delay

    settings = WorkerSettings(
        TABLE_NAME="t", QUEUE_URL="q", FOLLOW_UP_QUEUE_URL="f", TARGET_ROLE_NAME="r", EXEMPTION_TABLE_NAME="e",
        RETRY_BASE_DELAY_SECONDS=10, CONSISTENCY_RETRY_SECONDS=15, IN_FLIGHT_RETRY_SECONDS=30,
    )  # fmt: skip
    # Exponential per receive, capped at SQS's 900 s
    assert [retry_delay(RetryableError("Throttling", "x"), settings, n) for n in (1, 2, 3, 8)] == [
        10,
        20,
        40,
        900,
    ]
    # Known causes wait their own time
    assert retry_delay(RetryableError("InvalidParameterValue", "x", wait="consistency"), settings, 3) == 15
    assert retry_delay(RetryableError("IsolationInProgress", "x", wait="in-flight"), settings, 1) == 30
    # An error of the service's own table backs off like throttling
    assert retry_delay(error("InternalServerError", 500), settings, 2) == 20


def _wait(condition: Any, slept: list[float], **options: Any) -> None:
    """`wait_for` with the code "Busy" and the message "busy", waits recorded in `slept`."""
    wait_for(condition, sleep=slept.append, **{"code": "Busy", "message": "busy", **options})


def test_waiting_for_another_worker_backs_off_and_stops_as_soon_as_it_holds() -> None:
    # Given a condition that holds on its fourth ask
    slept: list[float] = []
    answers = iter([False, False, False, True])
    # When it is waited for
    _wait(lambda: next(answers), slept, budget_seconds=5, first_delay=0.05, max_delay=0.1)
    # Then it was asked at once, then after each wait, each twice the one before up to the cap
    assert slept == [0.05, 0.1, 0.1]
    assert next(answers, None) is None


def test_waiting_past_the_budget_hands_the_retry_to_the_queue_with_the_time_waited() -> None:
    # Given a condition that never holds
    slept: list[float] = []
    asked = 0

    def never() -> bool:
        nonlocal asked
        asked += 1
        return False

    # When it is waited for with a 1 s budget
    with pytest.raises(WaitedOut) as raised:
        _wait(
            never,
            slept,
            budget_seconds=1,
            first_delay=0.25,
            max_delay=4,
            message=lambda waited: f"still busy after {waited:.2f}s",
        )
    # Then it waited within the budget, asked after every wait, and the queue retries it in-flight
    assert slept == [0.25, 0.5] and asked == 3
    assert isinstance(raised.value, RetryableError)
    assert (raised.value.code, raised.value.message, raised.value.wait) == (
        "Busy",
        "still busy after 0.75s",
        "in-flight",
    )


def test_waiting_first_asks_only_after_the_first_wait() -> None:
    # Given a condition that holds at once
    slept: list[float] = []
    asked: list[bool] = []
    # When it is waited for, the first ask after the first wait
    _wait(
        lambda: asked.append(True) or True,
        slept,
        budget_seconds=1,
        first_delay=0.1,
        max_delay=1,
        wait_first=True,
    )
    # Then it waited once, then asked once
    assert slept == [0.1] and asked == [True]
