"""The local stack's IAM quota on a role's inline policies (`local_stack.iam_limits`), on in-process moto
(every suite installs it): what IAM refuses, as IAM refuses it."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local_stack.iam_limits import ROLE_INLINE_POLICIES_LIMIT


def _policy(resource_characters: int) -> str:
    # Written with whitespace, which IAM does not count.
    statement = {"Effect": "Deny", "Action": "s3:X", "Resource": "arn:aws:s3:::" + "x" * resource_characters}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]}, indent=4)


def test_a_role_past_its_inline_policy_limit_is_refused_as_iam_refuses_it() -> None:
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_role(RoleName="app", AssumeRolePolicyDocument="{}")
        # Given a role with 6,000 characters of inline policy
        iam.put_role_policy(RoleName="app", PolicyName="big", PolicyDocument=_policy(6_000))
        # When another policy would take it past 10,240 characters
        with pytest.raises(ClientError) as refused:
            iam.put_role_policy(RoleName="app", PolicyName="more", PolicyDocument=_policy(4_200))
        # Then IAM's LimitExceeded (HTTP 409), and nothing written
        error = refused.value.response
        assert error["Error"]["Code"] == "LimitExceeded"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 409
        assert error["Error"]["Message"] == (
            f"Maximum policy size of {ROLE_INLINE_POLICIES_LIMIT} bytes exceeded for role app"
        )
        assert iam.list_role_policies(RoleName="app")["PolicyNames"] == ["big"]
        # And a policy that fits (whitespace not counted), or one replacing the big one, is written
        iam.put_role_policy(RoleName="app", PolicyName="more", PolicyDocument=_policy(4_000))
        iam.put_role_policy(RoleName="app", PolicyName="big", PolicyDocument=_policy(6_040))
        assert sorted(iam.list_role_policies(RoleName="app")["PolicyNames"]) == ["big", "more"]
