"""EventBridge events in the shapes AWS documents, for the demo and the benchmark.

- GuardDuty finding (`aws.guardduty` / `GuardDuty Finding`): `detail` is the finding, with the
  affected instance in `resource.instanceDetails` and the member account in `accountId`.
- Tag change (`aws.tag` / `Tag Change on Resource`): `resources` is the instance ARN, `detail` holds
  `changed-tag-keys`, `service`, `resource-type`, `version` and `tags` (the tags after the change).
- Security Hub custom action (`aws.securityhub` / `Security Hub Findings - Custom Action`): `resources`
  is the action's ARN, `detail` holds `actionName`, `actionDescription` and the selected `findings` in
  the AWS Security Finding Format, each with its `Resources` (an EC2 instance: `AwsEc2Instance`, `Id` its
  ARN).
- CloudTrail call (`aws.ec2`, `aws.iam`, ... / `AWS API Call via CloudTrail`): `detail` is the CloudTrail
  record: `eventName`, `eventID`, `eventTime`, `awsRegion`, `recipientAccountId`, the caller in
  `userIdentity` (an assumed role's issuer in `sessionContext.sessionIssuer`), `requestParameters` and
  `responseElements` as CloudTrail writes them (EC2 lists as `{"items": [...]}`).

tests/events/*.json hold the same shapes as fixed files.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.models import iso8601, utcnow


def _now() -> str:
    return iso8601(utcnow())


def guardduty_finding(
    *,
    account_id: str,
    region: str,
    instance_id: str,
    severity: float = 8,
    finding_type: str = "CryptoCurrency:EC2/BitcoinTool.B!DNS",
    administrator_account: str | None = None,
    finding_id: str | None = None,
) -> dict[str, Any]:
    """A finding about an instance as it reaches the delegated administrator's bus."""
    finding_id = finding_id or uuid.uuid4().hex
    now = _now()
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "GuardDuty Finding",
        "source": "aws.guardduty",
        "account": administrator_account or account_id,
        "time": now,
        "region": region,
        "resources": [],
        "detail": {
            "schemaVersion": "2.0",
            "accountId": account_id,
            "region": region,
            "partition": "aws",
            "id": finding_id,
            "arn": f"arn:aws:guardduty:{region}:{account_id}:detector/demo/finding/{finding_id}",
            "type": finding_type,
            "resource": {
                "resourceType": "Instance",
                "instanceDetails": {
                    "instanceId": instance_id,
                    "instanceType": "t3.micro",
                    "instanceState": "running",
                    "availabilityZone": f"{region}a",
                    "imageId": "ami-0123456789abcdef0",
                    "networkInterfaces": [],
                    "tags": [],
                },
            },
            "service": {
                "serviceName": "guardduty",
                "detectorId": "demo",
                "action": {
                    "actionType": "DNS_REQUEST",
                    "dnsRequestAction": {"domain": "pool.example.com", "protocol": "UDP", "blocked": False},
                },
                "resourceRole": "ACTOR",
                "eventFirstSeen": now,
                "eventLastSeen": now,
                "archived": False,
                "count": 1,
            },
            "severity": severity,
            "createdAt": now,
            "updatedAt": now,
            "title": f"The EC2 instance {instance_id} is querying a domain name associated with Bitcoin.",
            "description": f"The EC2 instance {instance_id} is querying a domain name associated with "
            "cryptocurrency-related activity.",
        },
    }


def tag_change(
    *,
    account_id: str,
    region: str,
    instance_id: str,
    tags: dict[str, str] | None = None,
    changed: list[str] | None = None,
    with_account: bool = True,
) -> dict[str, Any]:
    """A tag change on an instance. `with_account=False`: as moto delivers it, with no `account`."""
    tags = {"isolate": "true"} if tags is None else tags
    event: dict[str, Any] = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Tag Change on Resource",
        "source": "aws.tag",
        "account": account_id,
        "time": _now(),
        "region": region,
        "resources": [f"arn:aws:ec2:{region}:{account_id}:instance/{instance_id}"],
        "detail": {
            "changed-tag-keys": changed if changed is not None else ["isolate"],
            "service": "ec2",
            "resource-type": "instance",
            "version": 1,
            "tags": tags,
        },
    }
    if not with_account:
        del event["account"]
    return event


def security_hub_custom_action(
    *,
    action_account: str,
    action_region: str,
    resources: list[tuple[str, str]],
    action_id: str = "IsolateInstance",
    action_name: str = "Isolate instance",
    finding_account: str | None = None,
) -> dict[str, Any]:
    """A custom action on one finding per resource; `resources` are (ASFF type, id) pairs, e.g.
    ("AwsEc2Instance", instance ARN) or ("AwsS3Bucket", bucket ARN). Each finding's `AwsAccountId` (the
    account that imported it) is `finding_account`, else the resource's own account."""
    now = _now()
    findings = []
    for resource_type, resource_id in resources:
        finding_id = f"arn:aws:securityhub:{action_region}:{action_account}:finding/{uuid.uuid4()}"
        account = finding_account or resource_id.split(":")[4] or action_account
        findings.append(
            {
                "SchemaVersion": "2018-10-08",
                "Id": finding_id,
                "ProductArn": f"arn:aws:securityhub:{action_region}::product/aws/guardduty",
                "GeneratorId": "arn:aws:guardduty:demo",
                "AwsAccountId": account,
                "Types": ["TTPs/Command and Control/Backdoor:EC2-C&CActivity.B!DNS"],
                "CreatedAt": now,
                "UpdatedAt": now,
                "Severity": {"Label": "HIGH", "Normalized": 70},
                "Title": f"Command and control activity from {resource_id.rsplit('/', 1)[-1]}",
                "Description": "Demo finding.",
                "Resources": [{"Type": resource_type, "Id": resource_id, "Partition": "aws"}],
                "RecordState": "ACTIVE",
                "Workflow": {"Status": "NEW"},
            }
        )
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Security Hub Findings - Custom Action",
        "source": "aws.securityhub",
        "account": action_account,
        "time": now,
        "region": action_region,
        "resources": [f"arn:aws:securityhub:{action_region}:{action_account}:action/custom/{action_id}"],
        "detail": {
            "actionName": action_name,
            "actionDescription": "Isolate every EC2 instance",
            "findings": findings,
        },
    }


def cloudtrail_call(
    *,
    source: str,
    event_name: str,
    account_id: str,
    region: str,
    caller_role_arn: str,
    session_name: str = "harness",
    request_parameters: dict[str, Any] | None = None,
    response_elements: dict[str, Any] | None = None,
    error_code: str | None = None,
) -> dict[str, Any]:
    """A management event of a call made with an assumed role (`caller_role_arn`) as CloudTrail
    delivers it to EventBridge (moto has no CloudTrail: the call's real fields, AWS's shape)."""
    now = _now()
    role_name = caller_role_arn.rsplit("/", 1)[-1]
    event_id = str(uuid.uuid4())
    detail: dict[str, Any] = {
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": f"AROAEXAMPLE:{session_name}",
            "arn": f"arn:aws:sts::{account_id}:assumed-role/{role_name}/{session_name}",
            "accountId": account_id,
            "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": "AROAEXAMPLE",
                    "arn": caller_role_arn,
                    "accountId": account_id,
                    "userName": role_name,
                },
                "attributes": {"creationDate": now, "mfaAuthenticated": "false"},
            },
        },
        "eventTime": now,
        "eventSource": f"{source.removeprefix('aws.')}.amazonaws.com",
        "eventName": event_name,
        "awsRegion": region,
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "ec2-isolation harness",
        "requestParameters": request_parameters,
        "responseElements": response_elements,
        "requestID": str(uuid.uuid4()),
        "eventID": event_id,
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account_id,
        "eventCategory": "Management",
    }
    if error_code:
        detail["errorCode"] = error_code
        detail["errorMessage"] = "injected"
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "AWS API Call via CloudTrail",
        "source": source,
        "account": account_id,
        "time": now,
        "region": region,
        "resources": [],
        "detail": detail,
    }


def groups_changed(eni_id: str, group_ids: list[str]) -> dict[str, Any]:
    """ModifyNetworkInterfaceAttribute's requestParameters for a change of groups."""
    return {"networkInterfaceId": eni_id, "groupSet": {"items": [{"groupId": g} for g in group_ids]}}
