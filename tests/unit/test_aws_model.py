"""The bench's model of EC2 throttling (`local_stack.aws_model.Throttling`): a share of mutating calls
refused, none of the reads, and none while its pause file exists (the bench's single isolations)."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from local_stack.aws_model import Throttling


def test_every_mutating_call_is_throttled_at_a_share_of_one_and_no_read() -> None:
    throttle = Throttling(share=1.0).hook()
    with pytest.raises(ClientError) as refused:
        throttle(event_name="before-call.ec2.ModifyNetworkInterfaceAttribute")
    assert refused.value.response["Error"]["Code"] == "RequestLimitExceeded"
    throttle(event_name="before-call.ec2.DescribeInstances")


def test_nothing_is_throttled_while_the_pause_file_exists(tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    throttle = Throttling(share=1.0, paused_by=str(paused)).hook()
    paused.touch()
    throttle(event_name="before-call.ec2.ModifyNetworkInterfaceAttribute")
    paused.unlink()
    with pytest.raises(ClientError):
        throttle(event_name="before-call.ec2.ModifyNetworkInterfaceAttribute")
