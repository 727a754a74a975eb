"""Guardrail events and the forwarding audit, as deployed: CloudTrail calls (documented shapes, in
tests/events) put on the stack account's default bus reach the guardrail queue through the template's
rule, the guardrail function reports them on the stack's bus; the audit assumes the execution role of a
member account where iam-execution-role.yml is deployed (moto's CloudFormation) and finds what drifted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from tests.conftest import MEMBER_ACCOUNT, STACK_REGION, Stack
from tests.support.events import lambda_context, sqs_event

from local_stack.member_role import deploy_member_role
from local_stack.organization import member_session
from shared.errors import PermanentError
from shared.store import accounts

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
BUS = "ec2-isolation-test"
WORKER_ROLE_ARN = "arn:aws:iam::123456789012:role/ec2-isolation-test-WorkerFunctionRole-ABC"


@pytest.fixture
def guardrails(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The guardrail queue (the template's, provisioned with the stack) and a queue that hears every
    guardrail event on the stack's bus."""
    from shared import config

    sqs, events = stack.sqs, boto3.client("events", region_name=STACK_REGION)
    (queue_url,) = [u for u in sqs.list_queues()["QueueUrls"] if "-GuardrailQueue-" in u]
    heard = sqs.create_queue(QueueName="guardrail-events")["QueueUrl"]
    heard_arn = sqs.get_queue_attributes(QueueUrl=heard, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name="guardrail-events",
        EventBusName=BUS,
        EventPattern=json.dumps({"source": ["ec2-isolation"], "detail-type": ["EC2 Isolation Guardrail"]}),
    )
    events.put_targets(Rule="guardrail-events", EventBusName=BUS, Targets=[{"Id": "q", "Arn": heard_arn}])
    config.guardrail_settings.cache_clear()
    config.audit_settings.cache_clear()

    class Guardrails:
        def put(self, event: dict[str, Any]) -> None:
            answer = events.put_events(
                Entries=[
                    {
                        "Source": event["source"],
                        "DetailType": event["detail-type"],
                        "Detail": json.dumps(event["detail"]),
                        "Resources": [],
                    }
                ]
            )
            assert not answer["FailedEntryCount"]

        def run(self) -> dict[str, Any]:
            from guardrail.app import lambda_handler

            arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
            answer: dict[str, Any] = lambda_handler(sqs_event(batch, arn), lambda_context())
            failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
            for message in batch:
                if message["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            return answer

        def heard(self) -> list[dict[str, Any]]:
            found = []
            while messages := sqs.receive_message(QueueUrl=heard, MaxNumberOfMessages=10).get("Messages"):
                for message in messages:
                    found.append(json.loads(message["Body"]))
                    sqs.delete_message(QueueUrl=heard, ReceiptHandle=message["ReceiptHandle"])
            return found

    return Guardrails()


def _event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.mark.parametrize(
    ("name", "finding", "resource"),
    [
        (
            "guardrail-update-assume-role-policy.json",
            "UpdateAssumeRolePolicy",
            "role/ec2-isolation-execution",
        ),
        ("guardrail-detach-role-policy.json", "DetachRolePolicy", "role/ec2-isolation-deny-all"),
        ("guardrail-disable-rule.json", "DisableRule", "rule/ec2-isolation-forward-tamper-eu-west-1"),
        (
            "guardrail-stop-logging.json",
            "StopLogging",
            "trail/arn:aws:cloudtrail:eu-west-1:222222222222:trail/organization-trail",
        ),
        (
            "guardrail-put-role-policy-by-execution-role.json",
            "ExecutionRoleWrotePolicy",
            "role/app",
        ),
    ],
)
def test_a_call_that_could_switch_the_service_off_is_reported(guardrails, name, finding, resource) -> None:
    # Given a member's call on the service's roles, forwarding rules or a trail, as CloudTrail sends it
    event = _event(name)
    guardrails.put(event)
    # When the guardrail function reads the guardrail queue
    assert guardrails.run() == {"batchItemFailures": []}
    # Then one guardrail event on the stack's bus names the call, the caller, the account and the event id
    [heard] = guardrails.heard()
    assert heard["source"] == "ec2-isolation" and heard["detail-type"] == "EC2 Isolation Guardrail"
    detail = heard["detail"]
    assert detail["finding"] == finding and detail["resource"] == resource
    assert detail["call"] == event["detail"]["eventName"] and detail["kind"] == "call"
    assert detail["caller"] == event["detail"]["userIdentity"]["arn"]
    assert (detail["account_id"], detail["region"]) == ("222222222222", event["detail"]["awsRegion"])
    assert detail["event_id"] == event["detail"]["eventID"]


def test_the_execution_roles_credentials_deny_is_no_guardrail_event(guardrails) -> None:
    # Given the execution role writing the real credentials deny on an application role
    from worker.steps.credentials import policy_document

    event = _event("guardrail-put-role-policy-by-execution-role.json")
    arn = "arn:aws:ec2:eu-west-1:222222222222:instance/i-0123456789abcdef0"
    event["detail"]["requestParameters"]["policyDocument"] = json.dumps(policy_document([arn]))
    guardrails.put(event)
    # Then it is acknowledged and nothing is reported
    assert guardrails.run() == {"batchItemFailures": []}
    assert guardrails.heard() == []


@pytest.mark.parametrize(
    "document",
    [
        # a deny of everything to everyone on an application role (no instance condition)
        {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]},
        # the deny plus an allow
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Deny",
                    "Action": "*",
                    "Resource": "*",
                    "Condition": {
                        "ArnEquals": {"ec2:SourceInstanceARN": ["arn:aws:ec2:eu-west-1:2:instance/i-1"]}
                    },
                },
                {"Effect": "Allow", "Action": "iam:*", "Resource": "*"},
            ],
        },
        "not json",
    ],
)
def test_any_other_document_by_the_execution_role_is_reported(guardrails, document) -> None:
    event = _event("guardrail-put-role-policy-by-execution-role.json")
    event["detail"]["requestParameters"]["policyDocument"] = (
        document if isinstance(document, str) else json.dumps(document)
    )
    guardrails.put(event)
    guardrails.run()
    [heard] = guardrails.heard()
    assert heard["detail"]["finding"] == "ExecutionRoleWrotePolicy"


def test_a_guardrail_event_that_cannot_be_published_is_tried_again(guardrails, monkeypatch) -> None:
    # Given the bus refusing every entry
    from shared import outcomes

    guardrails.put(_event("guardrail-disable-rule.json"))
    monkeypatch.setattr(outcomes, "FIRST_DELAY_SECONDS", 0)
    refusing = type(
        "Refusing",
        (),
        {
            "put_events": lambda self, **kw: {
                "FailedEntryCount": 1,
                "Entries": [{"ErrorCode": "InternalFailure"}],
            }
        },
    )()
    monkeypatch.setattr("guardrail.app.same_account_client", lambda service: refusing)
    # Then the message fails (it comes back, then waits in the DLQ), never dropped
    assert len(guardrails.run()["batchItemFailures"]) == 1


# --- the forwarding audit ---------------------------------------------------------------------------------


@pytest.fixture
def audited(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A member account with iam-execution-role.yml deployed in the stack's region, forwarding to the
    stack's bus; the audit's settings."""
    from shared import config

    bus_arn = f"arn:aws:events:{STACK_REGION}:123456789012:event-bus/{BUS}"
    session = member_session(MEMBER_ACCOUNT, STACK_REGION)
    deploy_member_role(
        session,
        ROOT / "iam-execution-role.yml",
        {"WorkerRoleArn": WORKER_ROLE_ARN, "CentralEventBusArn": bus_arn, "IamRegion": STACK_REGION},
    )
    own_rules = {
        kind: next(
            r["Name"]
            for r in boto3.client("events", region_name=STACK_REGION).list_rules()["Rules"]
            if f"-{logical}-" in r["Name"]
        )
        for kind, logical in (
            ("TAG", "TagChangeRule"),
            ("TAMPER", "TamperRule"),
            ("GUARDRAIL", "GuardrailRule"),
        )
    }
    for name, value in {
        **{f"{kind}_RULE_NAME": rule for kind, rule in own_rules.items()},
        "EVENT_BUS_ARN": bus_arn,
        "WORKER_ROLE_ARN": WORKER_ROLE_ARN,
        "ALLOWED_ACCOUNT_IDS": MEMBER_ACCOUNT,
        "AUDIT_REGIONS": STACK_REGION,
    }.items():
        monkeypatch.setenv(name, value)
    config.audit_settings.cache_clear()
    return session


def _audit(**kwargs: Any) -> list[tuple[str, str]]:
    from guardrail import audit
    from shared.config import audit_settings

    run = audit.run(audit_settings(), **kwargs)
    return [(f.finding, f.resource) for f in run.findings]


def test_a_clean_account_raises_no_event(audited, guardrails) -> None:
    # Given a member account as the StackSet deployed it
    # When the scheduled audit runs (its Lambda entry point, with Scheduler's event)
    from guardrail.app import audit_handler

    summary = audit_handler({"source": "aws.scheduler", "detail-type": "Scheduled Event"}, lambda_context())
    # Then it audited the account and found nothing, and nothing was reported
    assert (summary["accounts"], summary["regions"], summary["findings"]) == (1, [STACK_REGION], [])
    assert guardrails.heard() == []


def test_a_disabled_forwarding_rule_is_found(audited, guardrails) -> None:
    # Given the member's tamper forwarding rule disabled (the guardrail event of it was the rule's last)
    name = f"ec2-isolation-forward-guardrail-{STACK_REGION}"
    audited.client("events").disable_rule(Name=name)
    # Then the audit finds it, and reports it on the stack's bus
    assert _audit() == [("ForwardingRuleDisabled", f"rule/{name}")]
    [heard] = guardrails.heard()
    assert heard["detail"]["kind"] == "audit" and heard["detail"]["account_id"] == MEMBER_ACCOUNT


def test_a_retargeted_forwarding_rule_is_found(audited) -> None:
    name = f"ec2-isolation-forward-guardrail-{STACK_REGION}"
    events = audited.client("events")
    events.remove_targets(Rule=name, Ids=["CentralEventBus"])
    events.put_targets(
        Rule=name,
        Targets=[
            {"Id": "elsewhere", "Arn": f"arn:aws:events:{STACK_REGION}:{MEMBER_ACCOUNT}:event-bus/default"}
        ],
    )
    assert _audit() == [("ForwardingRuleRetargeted", f"rule/{name}")]


def test_a_narrowed_forwarding_rule_is_found(audited) -> None:
    # Given the member's tamper forwarding rule rewritten to match nothing the stack acts on (PutRule)
    name = f"ec2-isolation-forward-tamper-{STACK_REGION}"
    events = audited.client("events")
    events.put_rule(Name=name, EventPattern=json.dumps({"source": ["aws.ec2"], "detail-type": ["nothing"]}))
    assert _audit() == [("ForwardingRulePatternChanged", f"rule/{name}")]


def test_a_deleted_forwarding_rule_is_found(audited) -> None:
    name = f"ec2-isolation-forward-guardrail-{STACK_REGION}"
    events = audited.client("events")
    events.remove_targets(Rule=name, Ids=["CentralEventBus"])
    events.delete_rule(Name=name)
    assert _audit() == [("ForwardingRuleMissing", f"rule/{name}")]


def test_a_changed_trust_policy_is_found(audited) -> None:
    # Given the execution role's trust rewritten to admit another principal as well
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": [WORKER_ROLE_ARN, "arn:aws:iam::999988887777:root"]},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    audited.client("iam").update_assume_role_policy(
        RoleName="ec2-isolation-execution", PolicyDocument=json.dumps(trust)
    )
    assert _audit() == [("TrustPolicyChanged", "role/ec2-isolation-execution")]


def test_a_role_that_cannot_be_assumed_is_found(audited) -> None:
    # moto lets anyone assume any role: AWS's refusal is injected
    def refused(account: str, region: str) -> Any:
        raise PermanentError("RoleNotAssumable", f"cannot assume the role in {account}")

    assert _audit(sessions=refused) == [("RoleNotAssumable", "role/ec2-isolation-execution")]


def test_without_an_allow_list_the_accounts_the_worker_held_the_role_in_are_audited(
    audited, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import config

    monkeypatch.setenv("ALLOWED_ACCOUNT_IDS", "")
    config.audit_settings.cache_clear()
    client = boto3.client("dynamodb", region_name=STACK_REGION)
    # Given no account noted yet: nothing to audit
    assert _audit() == []
    # When the worker notes the member account (after assuming the role there)
    accounts.note(client, stack.table_name, MEMBER_ACCOUNT)
    accounts.note(client, stack.table_name, MEMBER_ACCOUNT)
    assert accounts.known(client, stack.table_name) == {MEMBER_ACCOUNT}
    # Then the audit covers it
    audited.client("events").disable_rule(Name=f"ec2-isolation-forward-tag-{STACK_REGION}")
    assert [f for f, _ in _audit()] == ["ForwardingRuleDisabled"]


def test_the_worker_notes_the_accounts_it_held_the_role_in(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from tests.conftest import MEMBER_REGION
    from tests.integration.test_worker import isolate
    from tests.support.aws import Member

    from shared import aws

    client = boto3.client("dynamodb", region_name=STACK_REGION)
    accounts.forget_noted()
    member = Member(MEMBER_ACCOUNT, MEMBER_REGION)
    # Given an isolation in a member account, and a request naming an account whose role is refused
    instance = member.instance(member.vpc())
    assert isolate(stack, member, instance)["status"] == "ISOLATED"
    real = aws.session_for_account

    def refused(account_id: str, *args: Any, **kwargs: Any) -> Any:
        if account_id == "999988887777":
            raise PermanentError("RoleNotAssumable", "not trusted")  # moto trusts everyone: AWS's answer
        return real(account_id, *args, **kwargs)

    monkeypatch.setattr("worker.receive.session_for_account", refused)
    stack.api(
        "POST",
        "/isolate",
        body={"instance_id": "i-0123456789abcdef0", "account_id": "999988887777", "region": MEMBER_REGION},
    )
    stack.drain()
    # Then the audit's list holds the account the worker held the role in, not the made-up one
    deadline = time.monotonic() + 5
    while MEMBER_ACCOUNT not in accounts.known(client, stack.table_name):
        assert time.monotonic() < deadline, "the account was never noted"
        time.sleep(0.05)
    assert accounts.known(client, stack.table_name) == {MEMBER_ACCOUNT}


def test_each_account_is_audited_on_its_own(audited, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import OTHER_ACCOUNT

    from shared import config

    # Given two accounts, one where the member stack is deployed and one where it never was
    monkeypatch.setenv("ALLOWED_ACCOUNT_IDS", f"{MEMBER_ACCOUNT},{OTHER_ACCOUNT}")
    config.audit_settings.cache_clear()
    from guardrail import audit

    run = audit.run(config.audit_settings())
    # Then the findings are the second account's only: its role and rules are not there
    assert {f.account_id for f in run.findings} == {OTHER_ACCOUNT}
    assert sorted(f.finding for f in run.findings) == [
        "AuditIncomplete",  # moto lets the missing role be assumed; its trust cannot be read
        "ForwardingRuleMissing",
        "ForwardingRuleMissing",
        "ForwardingRuleMissing",
    ]
