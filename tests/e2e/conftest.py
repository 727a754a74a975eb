"""End to end through the local stack: `ec2-isolation serve` as a user runs it, on loopback.

The suite-wide `_aws_environment` fixture (tests/conftest.py) is replaced here by a no-op: these tests
point boto3 at a moto server through `AWS_ENDPOINT_URL`, which that fixture removes before each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _aws_environment() -> Iterator[None]:
    yield
