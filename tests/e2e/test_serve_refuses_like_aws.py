"""`ec2-isolation serve` on embedded AWS refuses what AWS refuses: an account that never deployed the
execution role, or that expects another ExternalId, ends `RoleNotAssumable` as deployed (moto alone lets
any caller assume any role), and a dry run (moto has no policy simulator) prints no traceback."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from local_stack.organization import member_session
from tests.e2e.helpers import CLI, ROOT, ServedDemo, serve_demo, subprocess_environment

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(240)]

NOT_ONBOARDED = "111122223333"


@pytest.fixture(scope="module")
def served() -> Iterator[ServedDemo]:
    with serve_demo() as running:
        yield running


def client(served: ServedDemo, *args: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_environment(EC2_ISOLATION_API=served.url, EC2_ISOLATION_API_KEY=served.key)
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=90, env=env, cwd=ROOT, stdin=subprocess.DEVNULL
    )


def test_an_account_without_the_execution_role_ends_role_not_assumable(served: ServedDemo) -> None:
    # When a responder isolates an instance of an account that never deployed iam-execution-role.yml
    done = client(served, "isolate", "i-0123456789abcdef0", "--account", NOT_ONBOARDED,
                  "--region", served.demo.region, "--wait")  # fmt: skip

    # Then STS refuses the worker, as in AWS, and the record ends FAILED RoleNotAssumable
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout and "RoleNotAssumable" in done.stdout, done.stdout
    assert "not authorized to perform: sts:AssumeRole on resource: " in done.stdout
    assert f"arn:aws:iam::{NOT_ONBOARDED}:role/ec2-isolation-execution" in done.stdout


def test_an_execution_role_expecting_another_external_id_refuses_the_worker(served: ServedDemo) -> None:
    # Given a member whose execution role expects an ExternalId the stack does not send
    instance = served.demo.instance("web-2", account=1)
    iam = member_session(instance.account_id, instance.region, base=boto3.Session()).client("iam")
    role = iam.get_role(RoleName="ec2-isolation-execution")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust["Statement"][0]["Condition"] = {"StringEquals": {"sts:ExternalId": "the-member-expects-this"}}
    iam.update_assume_role_policy(RoleName="ec2-isolation-execution", PolicyDocument=json.dumps(trust))

    # When the instance is isolated
    done = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                  "--region", instance.region, "--wait")  # fmt: skip

    # Then the worker is refused, and nothing of the instance changed
    assert done.returncode == 1 and "RoleNotAssumable" in done.stdout, done.stdout + done.stderr
    record = json.loads(client(served, "list", "--instance", instance.instance_id, "--json").stdout)["items"][
        0
    ]
    assert record["status"] == "FAILED" and record["steps"] == [] and record["prior_state"] is None


def test_sts_refuses_with_aws_code_status_and_message(served: ServedDemo) -> None:
    # When a principal the execution role does not trust (the management account itself) assumes it
    account = served.demo.accounts[0]
    role_arn = f"arn:aws:iam::{account.account_id}:role/ec2-isolation-execution"
    with pytest.raises(ClientError) as refused:
        boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="not-the-worker")

    # Then STS answers as AWS does: 403 AccessDenied, naming the caller and the role
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "AccessDenied"
    assert error["Error"]["Message"] == (
        f"User: {boto3.client('sts').get_caller_identity()['Arn']} is not authorized to perform: "
        f"sts:AssumeRole on resource: {role_arn}"
    )
    # And the role Organizations created in the member account still lets its management account in
    assert member_session(account.account_id, served.demo.region).client("sts").get_caller_identity()


def test_a_dry_run_prints_one_line_and_no_traceback(served: ServedDemo) -> None:
    # When a dry run checks the IAM steps (moto has no iam:SimulatePrincipalPolicy)
    instance = served.demo.instance("web-1")
    before = len(served.served.lines)
    done = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                  "--region", instance.region, "--dry-run", "--wait")  # fmt: skip

    # Then it ends CHECKED, those steps unverified, saying why
    assert done.returncode == 0 and "CHECKED" in done.stdout, done.stdout + done.stderr
    assert "unverified" in done.stdout and "SimulatePrincipalPolicy" in done.stdout
    # And the server's terminal says so in one line, with no traceback
    output = served.served.lines[before:]
    assert not any("Traceback" in line or "NotImplementedError" in line for line in output), "\n".join(output)
    said = [line for line in output if "does not implement iam:SimulatePrincipalPolicy" in line]
    assert len(said) == 1, "\n".join(output)
