"""iam-execution-role.yml deployed in a member account through the account's CloudFormation.

moto 5.2.5's CloudFormation creates the template's roles, inline policies and instance profile but
ignores a role's `ManagedPolicyArns`: each one, evaluated by the stack, is attached after it with
AttachRolePolicy. (A moto server started without `MOTO_IAM_LOAD_MANAGED_POLICIES=true` has no AWS
managed policy to attach: the role is then left without it, with a warning.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from local_stack.cloudformation import deploy_stack
from local_stack.templates import load_template
from shared.errors import error_code

log = logging.getLogger("local_stack.member_role")

EXECUTION_STACK = "ec2-isolation-execution"


def deploy_member_role(session: boto3.Session, template_path: Path, parameters: dict[str, str]) -> str:
    """Deploy the template in the session's account (or reuse the stack); the execution role's ARN."""
    template = load_template(template_path)
    managed = {
        f"{logical_id}:{index}": arn
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role"
        for index, arn in enumerate((resource.get("Properties") or {}).get("ManagedPolicyArns") or [])
    }
    stack = deploy_stack(
        session.client("cloudformation"),
        name=EXECUTION_STACK,
        template=template,
        parameters=parameters,
        evaluate=managed,
    )
    iam = session.client("iam")
    for key, arn in stack.values.items():
        role = stack.resources.get(key.split(":", 1)[0])
        if role is None:  # its Condition is false
            continue
        try:
            iam.attach_role_policy(RoleName=role, PolicyArn=arn)
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            log.warning("the endpoint has no policy %s: role %s is left without it", arn, role)
    return stack.outputs["ExecutionRoleArn"]
