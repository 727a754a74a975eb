"""Logs are JSON, name the isolation on every line about it, and never carry secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import isolate
from tests.support.aws import Faults, Member

from shared.observability import logger


def json_lines(text: str) -> list[dict]:
    """Every non-empty line, parsed: a line that is not JSON fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """What the service's logger writes, formatted as in Lambda (Powertools' JSON formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger._logger.addHandler(handler)
    yield stream
    logger._logger.removeHandler(handler)


def test_worker_logs_name_the_isolation_and_hold_no_credentials(
    stack: Stack, member: Member, faults: Faults, log_output: io.StringIO
) -> None:
    # Given a successful and a failed isolation, with the credentials the worker was given noted
    vpc = member.vpc()
    instance = member.instance(vpc)
    secrets: set[str] = set()
    faults.hook(
        "after-call.sts.AssumeRole",
        lambda parsed, **_: secrets.update(
            {parsed["Credentials"]["SecretAccessKey"], parsed["Credentials"]["SessionToken"]}
        ),
    )
    record = isolate(stack, member, instance, reason="log check")
    failed = isolate(stack, member, "i-0000000000000000f")

    # When the logs are read
    output = log_output.getvalue()
    lines = json_lines(output)

    # Then every log line is JSON, the worker's lines about an isolation name it, and no secret appears
    assert lines, "the worker logs"
    assert secrets and not any(secret in output for secret in secrets)
    assert "test-key" not in output  # the API key of the requests
    about = [
        line
        for line in lines
        if line.get("level")
        and line.get("location", "").split(":")[0]
        in ("run", "_run", "_open", "_retry_or_give_up", "contained")
    ]
    assert about
    for line in about:
        assert line["isolation_id"] in (record["isolation_id"], failed["isolation_id"])
        assert line["account_id"] == member.account_id and line["instance_id"] in (
            instance,
            "i-0000000000000000f",
        )
