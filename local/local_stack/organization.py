"""The demo organization's accounts: the organization itself, its member accounts and sessions in them
(through the role Organizations creates in each account it creates, which trusts the management
account)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.errors import error_code

MEMBER_ACCOUNT_NAMES = ("demo-workloads-a", "demo-workloads-b")
ACCESS_ROLE = "OrganizationAccountAccessRole"


def member_session(account_id: str, region: str, *, base: boto3.Session | None = None) -> boto3.Session:
    """A session in a member account, as its organization's management account (the stack's)."""
    sts = (base or boto3.Session()).client("sts", region_name=region)
    credentials = sts.assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/{ACCESS_ROLE}", RoleSessionName="ec2-isolation-seed"
    )["Credentials"]
    return boto3.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=region,
    )


def organization(org: Any) -> str:
    """The organization's id, created if the caller has none."""
    try:
        return str(org.create_organization(FeatureSet="ALL")["Organization"]["Id"])
    except ClientError as exc:
        if error_code(exc) != "AlreadyInOrganizationException":
            raise
        return str(org.describe_organization()["Organization"]["Id"])


def accounts_by_name(org: Any) -> dict[str, str]:
    return {
        account["Name"]: account["Id"]
        for page in org.get_paginator("list_accounts").paginate()
        for account in page["Accounts"]
    }


def member_accounts(org: Any, names: Sequence[str] = MEMBER_ACCOUNT_NAMES) -> list[tuple[str, str]]:
    """(name, account id) of each named member account, created if missing."""
    existing = accounts_by_name(org)
    members = []
    for name in names:
        if name not in existing:
            status = org.create_account(Email=f"{name}@example.com", AccountName=name)["CreateAccountStatus"]
            for _ in range(50):
                if status["State"] != "IN_PROGRESS":
                    break
                time.sleep(0.1)
                status = org.describe_create_account_status(CreateAccountRequestId=status["Id"])[
                    "CreateAccountStatus"
                ]
            if status["State"] != "SUCCEEDED":
                raise RuntimeError(f"could not create account {name}: {status.get('FailureReason')}")
            existing[name] = status["AccountId"]
        members.append((name, existing[name]))
    return members
