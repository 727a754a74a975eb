"""What template.yaml deploys, checked on the SAM output (the resources CloudFormation really creates)."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.infra.resolver import resolve

from local_stack.templates import load_template

#: Actions AWS authorises only on "*": none of the service's (it does not trace with X-Ray).
STAR_ONLY_ACTIONS: set[str] = set()

INGEST_ACTIONS = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "sqs:SendMessage",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "events:PutEvents",  # an exemption's change
}
WORKER_ACTIONS = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "sts:AssumeRole",
    "events:PutEvents",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:SendMessage",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Query",  # the tamper function's (it shares the role)
    "events:DescribeRule",  # the forwarding audit's (it shares the role): the stack's own rules only
    "dynamodb:ConditionCheckItem",  # a trigger's exemption, in the transaction of its record
}
SWEEPER_ACTIONS = {
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "events:PutEvents",
    "sqs:ReceiveMessage",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Query",
}


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


#: Each queue with its function, its dead-letter queue and its concurrency parameter.
CONSUMERS = [
    ("IsolationQueue", "WorkerFunction", "IsolationDeadLetterQueue", "WorkerMaxConcurrency"),
    ("FollowUpQueue", "FollowUpFunction", "FollowUpDeadLetterQueue", "FollowUpMaxConcurrency"),
]


def _mapping(transformed: dict[str, Any], function: str) -> dict[str, Any]:
    mappings = [
        r["Properties"]
        for r in _of_type(transformed, "AWS::Lambda::EventSourceMapping").values()
        if r["Properties"]["FunctionName"] == {"Ref": f"{function}Aliaslive"}
    ]
    assert len(mappings) == 1
    return mappings[0]


@pytest.mark.parametrize(("queue", "function", "dlq", "concurrency"), CONSUMERS)
def test_each_queue_is_read_by_its_function_with_partial_batch_failures(
    transformed: dict[str, Any], queue: str, function: str, dlq: str, concurrency: str
) -> None:
    # Given the function's event source mapping as SAM generates it
    mapping = _mapping(transformed, function)
    # Then it reads its queue, reports failed items one by one and has its own bounded concurrency
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": {"Ref": concurrency}}
    assert mapping["BatchSize"] == 10
    assert mapping["MaximumBatchingWindowInSeconds"] == 0


def test_the_follow_up_runs_the_workers_code_and_role(transformed: dict[str, Any]) -> None:
    # The member role trusts only the worker's role; the follow-up is the worker's other entry point
    resources = transformed["Resources"]
    worker, follow_up = resources["WorkerFunction"]["Properties"], resources["FollowUpFunction"]["Properties"]
    assert follow_up["Handler"] == "worker.app.follow_up_handler"
    assert follow_up["Role"] == worker["Role"] == {"Fn::GetAtt": ["WorkerFunctionRole", "Arn"]}
    assert follow_up["Environment"] == worker["Environment"]
    assert worker["Environment"]["Variables"]["FOLLOW_UP_QUEUE_URL"] == {"Ref": "FollowUpQueue"}


@pytest.mark.parametrize(("queue", "function", "dlq", "concurrency"), CONSUMERS)
def test_queue_visibility_is_at_least_six_function_timeouts(
    transformed: dict[str, Any], queue: str, function: str, dlq: str, concurrency: str
) -> None:
    # Then a message stays hidden for at least 6 x its function's timeout (AWS's advice)
    properties = transformed["Resources"][queue]["Properties"]
    assert properties["VisibilityTimeout"] >= 6 * transformed["Resources"][function]["Properties"]["Timeout"]


@pytest.mark.parametrize(("queue", "function", "dlq", "concurrency"), CONSUMERS)
def test_queue_redrives_to_its_dead_letter_queue_with_an_alarm(
    transformed: dict[str, Any], queue: str, function: str, dlq: str, concurrency: str
) -> None:
    resources = transformed["Resources"]
    redrive = resources[queue]["Properties"]["RedrivePolicy"]
    # Then after MaxReceiveCount receives a message moves to the DLQ, which keeps it 14 days
    assert redrive == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    assert resources[dlq]["Properties"]["MessageRetentionPeriod"] == 1209600
    assert resources[queue]["Properties"]["MessageRetentionPeriod"] == 1209600
    for name in (queue, dlq):
        assert resources[name]["Properties"]["SqsManagedSseEnabled"] is True
    # And an alarm watches the DLQ
    alarms = [
        r["Properties"]
        for r in _of_type(transformed, "AWS::CloudWatch::Alarm").values()
        if r["Properties"].get("Dimensions")
        == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq, "QueueName"]}}]
    ]
    assert len(alarms) == 1 and alarms[0]["MetricName"] == "ApproximateNumberOfMessagesVisible"


def test_worker_environment_carries_max_receive_count(deployed) -> None:
    # Given the deployed stack with a non-default MaxReceiveCount
    stack = deployed(MaxReceiveCount="7")
    # Then the worker knows which receive is the last one, and the queue agrees
    env = stack["Resources"]["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert env["MAX_RECEIVE_COUNT"] == 7
    assert stack["Resources"]["IsolationQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 7


def test_every_function_logs_to_its_own_group_with_retention(deployed) -> None:
    # Given the deployed stack (names resolved)
    stack = deployed()
    resources = stack["Resources"]
    functions = _of_type(stack, "AWS::Lambda::Function")
    assert set(functions) == {
        "IngestFunction",
        "WorkerFunction",
        "TamperFunction",
        "FollowUpFunction",
        "SweeperFunction",
        "GuardrailFunction",
        "AuditFunction",
    }
    for name, function in functions.items():
        properties = function["Properties"]
        # Then its log group is declared, named after the function, and expires
        group_name = properties["LoggingConfig"]["LogGroup"]["Ref"]
        group = resources[group_name]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert group["Properties"]["LogGroupName"] == f"/aws/lambda/{properties['FunctionName']}"
        assert group["Properties"]["RetentionInDays"] == 365
        # And the function's role may write there and nowhere else (but to the groups of the other
        # functions of that role: the worker's two entry points)
        role = resources[properties["Role"]["Fn::GetAtt"][0]]
        log_statements = [
            s
            for p in role["Properties"]["Policies"]
            for s in p["PolicyDocument"]["Statement"]
            if any(
                a.startswith("logs:")
                for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
            )
        ]
        # (the tamper and follow-up functions share the worker's role: member accounts trust that one role)
        sharing = [
            f["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
            for f in functions.values()
            if f["Properties"]["Role"] == properties["Role"]
        ]
        groups = [{"Fn::GetAtt": [group, "Arn"]} for group in sharing]
        assert [s["Resource"] for s in log_statements] == [groups[0] if len(groups) == 1 else groups], name


def test_functions_run_the_contract_handlers(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    ingest, worker = resources["IngestFunction"]["Properties"], resources["WorkerFunction"]["Properties"]
    sweeper = resources["SweeperFunction"]["Properties"]
    assert ingest["Handler"] == "ingest.app.lambda_handler"
    assert worker["Handler"] == "worker.app.lambda_handler"
    assert sweeper["Handler"] == "sweeper.app.lambda_handler"
    for function in (ingest, worker, sweeper):
        assert function["Runtime"] == "python3.12"
        assert function["Architectures"] == ["arm64"]
        # No X-Ray tracing: nothing in the code traces (its import would cost every cold start)
        assert "TracingConfig" not in function
        assert function["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "ec2-isolation"


def test_every_api_method_requires_the_api_key(transformed: dict[str, Any]) -> None:
    # Given the REST API definition SAM generates
    body = transformed["Resources"]["IsolationApi"]["Properties"]["Body"]
    methods = {(path, verb): op for path, ops in body["paths"].items() for verb, op in ops.items()}
    # Then it has exactly the contract's routes
    assert set(methods) == {
        ("/isolate", "post"),
        ("/isolations/{isolation_id}", "get"),
        ("/isolations", "get"),
        ("/isolations/{isolation_id}/release", "post"),
        ("/exemptions", "post"),
        ("/exemptions", "get"),
        ("/exemptions/{exemption_id}", "delete"),
        ("/console", "get"),
    }
    # And each data route needs the x-api-key header (the release and the exemptions' changes IAM
    # authorization too: below); the page (no data in it) loads without one
    for route, operation in methods.items():
        if route == ("/console", "get"):
            assert "security" not in operation or operation["security"] == [], operation
        elif route in SIGNED_ROUTES:
            assert operation["security"] == [{"AWS_IAM": []}, {"api_key": []}], route
        else:
            assert operation["security"] == [{"api_key": []}], route
    assert body["components"]["securitySchemes"]["api_key"] == {
        "type": "apiKey",
        "name": "x-api-key",
        "in": "header",
    }
    # And API Gateway's own errors (missing key, throttling) are JSON
    for response in ("DEFAULT_4XX", "DEFAULT_5XX"):
        templates = body["x-amazon-apigateway-gateway-responses"][response]["responseTemplates"]
        assert set(templates) == {"application/json"}


def test_api_key_usage_plan_and_stage(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    # Then the key is the one the ApiKeyId output names, and a usage plan throttles it
    assert resources["IsolationApiApiKey"]["Type"] == "AWS::ApiGateway::ApiKey"
    assert transformed["Outputs"]["ApiKeyId"]["Value"] == {"Ref": "IsolationApiApiKey"}
    plans = _of_type(transformed, "AWS::ApiGateway::UsagePlan")
    assert len(plans) == 1
    (plan,) = plans.values()
    assert set(plan["Properties"]["Throttle"]) == {"BurstLimit", "RateLimit"}
    stages = _of_type(transformed, "AWS::ApiGateway::Stage")
    assert [s["Properties"]["StageName"] for s in stages.values()] == ["v1"]
    assert all(s["Properties"]["TracingEnabled"] is True for s in stages.values())


def test_no_iam_statement_allows_star_resources(transformed: dict[str, Any], helpers) -> None:
    # Given every policy in the SAM output (roles, queue and bus policies)
    offenders = []
    for name, resource in transformed["Resources"].items():
        for statement in helpers.policy_statements(resource):
            actions = set(helpers.as_list(statement["Action"]))
            # Then no action is a wildcard ...
            assert not any("*" in action for action in actions if statement["Effect"] == "Allow"), name
            # ... and "*" resources only go with actions that cannot be scoped
            star = "*" in helpers.as_list(statement.get("Resource", []))
            if star and statement["Effect"] == "Allow" and not actions <= STAR_ONLY_ACTIONS:
                offenders.append((name, statement.get("Sid"), sorted(actions)))
    assert offenders == []


def test_function_roles_have_no_managed_policies(transformed: dict[str, Any]) -> None:
    # SAM's managed policies (AWSLambdaBasicExecutionRole, AWSLambdaSQSQueueExecutionRole) use "*".
    for name in ("IngestFunctionRole", "WorkerFunctionRole"):
        assert "ManagedPolicyArns" not in transformed["Resources"][name]["Properties"], name


def test_ingest_can_only_enqueue_and_use_the_table(transformed: dict[str, Any], helpers) -> None:
    role = transformed["Resources"]["IngestFunctionRole"]
    actions = helpers.actions_of(role)
    assert actions == INGEST_ACTIONS
    assert not {a for a in actions if a.split(":")[0] in ("sts", "ec2", "iam")}
    for statement in helpers.policy_statements(role):
        if "sqs:SendMessage" in helpers.as_list(statement["Action"]):
            assert statement["Resource"] == {"Fn::GetAtt": ["IsolationQueue", "Arn"]}


def test_worker_permissions_are_exactly_its_calls(transformed: dict[str, Any], helpers) -> None:
    role = transformed["Resources"]["WorkerFunctionRole"]
    assert helpers.actions_of(role) == WORKER_ACTIONS
    for statement in helpers.policy_statements(role):
        actions = set(helpers.as_list(statement["Action"]))
        if actions & {"sqs:ReceiveMessage", "sqs:DeleteMessage"}:
            assert statement["Resource"] == [
                {"Fn::GetAtt": ["IsolationQueue", "Arn"]},
                {"Fn::GetAtt": ["TamperQueue", "Arn"]},
                {"Fn::GetAtt": ["FollowUpQueue", "Arn"]},
            ]
        if "events:DescribeRule" in actions:  # the patterns the members' forwarding rules repeat
            assert statement["Resource"] == [
                {"Fn::GetAtt": ["TagChangeRule", "Arn"]},
                {"Fn::GetAtt": ["TamperRule", "Arn"]},
                {"Fn::GetAtt": ["GuardrailRule", "Arn"]},
            ]
        if "sqs:SendMessage" in actions:
            # the hand-over to the follow-up phase, and a tamper call that waits for an isolation in
            # flight sent again to its own queue; nothing else
            assert actions == {"sqs:SendMessage"}
            assert statement["Resource"] == [
                {"Fn::GetAtt": ["FollowUpQueue", "Arn"]},
                {"Fn::GetAtt": ["TamperQueue", "Arn"]},
            ]
        if actions == {"dynamodb:ConditionCheckItem"}:  # the exemptions: read, never written
            assert statement["Resource"] == {"Fn::GetAtt": ["ExemptionTable", "Arn"]}
        elif any(a.startswith("dynamodb:") for a in actions):
            assert statement["Resource"] in (
                {"Fn::GetAtt": ["IsolationTable", "Arn"]},
                # the tamper function finds the isolations a call touches
                [
                    {"Fn::Sub": "${IsolationTable.Arn}/index/by-instance"},
                    {"Fn::Sub": "${IsolationTable.Arn}/index/isolated-now"},
                ],
            )


@pytest.mark.parametrize("organization", ["", "o-a1b2c3d4e5"])
def test_worker_can_assume_only_the_target_role_name(deployed, helpers, organization: str) -> None:
    # Given the deployed stack, with and without an organization id
    stack = deployed(TargetRoleName="ir-exec", OrganizationId=organization)
    role = stack["Resources"]["WorkerFunctionRole"]
    statements = [
        s
        for s in helpers.policy_statements(role)
        if any(a.startswith("sts:") for a in helpers.as_list(s["Action"]))
    ]
    # Then it may assume one role name, in any account, and nothing else of STS
    assert len(statements) == 1
    (statement,) = statements
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Resource"] == "arn:aws:iam::*:role/ir-exec"
    # And only roles of the organization when one is given
    if organization:
        assert statement["Condition"] == {"StringEquals": {"aws:ResourceOrgID": organization}}
    else:
        assert "Condition" not in statement


def test_table_has_its_four_indexes_pitr_and_sse(transformed: dict[str, Any]) -> None:
    table = transformed["Resources"]["IsolationTable"]
    properties = table["Properties"]
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"] == {"SSEEnabled": True}
    assert properties["DeletionProtectionEnabled"] is True
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    by_instance, by_recent, by_final_lease, isolated_now = properties["GlobalSecondaryIndexes"]
    assert by_recent["IndexName"] == "by-recent"
    assert by_recent["KeySchema"] == [
        {"AttributeName": "list_shard", "KeyType": "HASH"},
        {"AttributeName": "listed_at", "KeyType": "RANGE"},
    ]
    assert by_instance["IndexName"] == "by-instance"
    assert by_instance["KeySchema"] == [
        {"AttributeName": "instance_id", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    assert by_final_lease["IndexName"] == "by-final-lease"
    assert by_final_lease["KeySchema"] == [
        {"AttributeName": "final_attempt", "KeyType": "HASH"},
        {"AttributeName": "lease_until", "KeyType": "RANGE"},
    ]
    for index in (by_instance, by_recent, by_final_lease):
        assert index["Projection"] == {"ProjectionType": "ALL"}
    # Sparse: only the slots of instances isolated now carry isolated_in; their keys are all it needs
    assert isolated_now["IndexName"] == "isolated-now"
    assert isolated_now["KeySchema"] == [
        {"AttributeName": "isolated_in", "KeyType": "HASH"},
        {"AttributeName": "pk", "KeyType": "RANGE"},
    ]
    assert isolated_now["Projection"] == {"ProjectionType": "KEYS_ONLY"}


def test_sweeper_runs_every_minute_peeks_the_dlqs_and_queries_its_indexes_only(
    transformed: dict[str, Any], helpers
) -> None:
    resources = transformed["Resources"]
    role = resources["SweeperFunctionRole"]
    assert helpers.actions_of(role) == SWEEPER_ACTIONS
    queried = []
    for statement in helpers.policy_statements(role):
        actions = set(helpers.as_list(statement["Action"]))
        if "sqs:ReceiveMessage" in actions:
            assert statement["Resource"] == [
                {"Fn::GetAtt": ["IsolationDeadLetterQueue", "Arn"]},
                {"Fn::GetAtt": ["FollowUpDeadLetterQueue", "Arn"]},
                {"Fn::GetAtt": ["TamperDeadLetterQueue", "Arn"]},
            ]
        if "dynamodb:Query" in actions:
            queried.append(statement["Resource"])
    assert queried == [
        {"Fn::Sub": "${IsolationTable.Arn}/index/by-final-lease"},
        [
            {"Fn::Sub": "${IsolationTable.Arn}/index/isolated-now"},
            {"Fn::Sub": "${IsolationTable.Arn}/index/by-recent"},
        ],
    ]
    variables = resources["SweeperFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["TAMPER_DEAD_LETTER_QUEUE_URL"] == {"Ref": "TamperDeadLetterQueue"}
    (schedule,) = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::Scheduler::Schedule"
        and r["Properties"]["Target"]["Arn"] == {"Ref": "SweeperFunctionAliaslive"}
    ]
    assert schedule["Properties"]["ScheduleExpression"] == {"Ref": "SweepSchedule"}
    assert schedule["Properties"]["Target"]["Arn"] == {"Ref": "SweeperFunctionAliaslive"}
    assert transformed["Parameters"]["SweepSchedule"]["Default"] == "rate(1 minute)"


def test_rules_deliver_to_the_queue_and_never_drop_an_event(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    for name in ("GuardDutyFindingRule", "TagChangeRule"):
        (target,) = resources[name]["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["IsolationQueue", "Arn"]}
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["IsolationDeadLetterQueue", "Arn"]}}
        assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 86400, "MaximumRetryAttempts": 185}


@pytest.mark.parametrize("queue", ["IsolationQueue", "IsolationDeadLetterQueue"])
def test_only_the_stacks_rules_may_send_to_the_queues(
    transformed: dict[str, Any], helpers, queue: str
) -> None:
    # Given the queue's resource policy
    (policy,) = [
        r
        for r in transformed["Resources"].values()
        if r["Type"] == "AWS::SQS::QueuePolicy" and r["Properties"]["Queues"] == [{"Ref": queue}]
    ]
    allows = [s for s in helpers.policy_statements(policy) if s["Effect"] == "Allow"]
    # Then EventBridge may send, only on behalf of this stack's rules
    assert allows == [
        {
            "Sid": allows[0]["Sid"],
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": [queue, "Arn"]},
            "Condition": {
                "ArnEquals": {
                    "aws:SourceArn": [
                        {"Fn::GetAtt": ["GuardDutyFindingRule", "Arn"]},
                        {"Fn::GetAtt": ["GuardDutyFindingBusRule", "Arn"]},
                        {"Fn::GetAtt": ["TagChangeRule", "Arn"]},
                        {"Fn::GetAtt": ["TagChangeBusRule", "Arn"]},
                        *(
                            {
                                "Fn::If": [
                                    "CreateSecurityHubAction",
                                    {"Fn::GetAtt": [rule, "Arn"]},
                                    {"Ref": "AWS::NoValue"},
                                ]
                            }
                            for rule in ("SecurityHubActionRule", "SecurityHubActionBusRule")
                        ),
                        *(
                            [
                                {
                                    "Fn::If": [
                                        "HasNotificationTopic",
                                        {"Fn::GetAtt": ["OutcomeNotificationRule", "Arn"]},
                                        {"Ref": "AWS::NoValue"},
                                    ]
                                }
                            ]
                            if queue == "IsolationDeadLetterQueue"
                            else []
                        ),
                    ]
                }
            },
        }
    ]
    # And nobody may use the queue without TLS
    denies = [s for s in helpers.policy_statements(policy) if s["Effect"] == "Deny"]
    assert {"Bool": {"aws:SecureTransport": "false"}} in [s["Condition"] for s in denies]


def test_outputs(deployed) -> None:
    outputs = deployed()["Outputs"]
    assert set(outputs) == {
        "ApiUrl",
        "ApiKeyId",
        "QueueUrl",
        "DeadLetterQueueUrl",
        "TamperQueueUrl",
        "TamperDeadLetterQueueUrl",
        "GuardrailQueueUrl",
        "GuardrailDeadLetterQueueUrl",
        "FollowUpQueueUrl",
        "FollowUpDeadLetterQueueUrl",
        "TableName",
        "ExemptionTableName",
        "WorkerRoleArn",
        "EventBusArn",
    }
    assert outputs["ApiUrl"]["Value"] == {
        "Fn::Sub": "https://${IsolationApi}.execute-api.us-east-1.amazonaws.com/v1"
    }
    assert outputs["WorkerRoleArn"]["Value"] == {"Fn::GetAtt": ["WorkerFunctionRole", "Arn"]}
    assert outputs["EventBusArn"]["Value"] == {"Fn::GetAtt": ["IsolationBus", "Arn"]}


def test_access_logging_and_account_role_follow_their_parameters(deployed) -> None:
    default = deployed()["Resources"]
    assert "ApiAccessLogGroup" in default and "ApiGatewayAccount" not in default
    stage = next(r for r in default.values() if r["Type"] == "AWS::ApiGateway::Stage")
    assert stage["Properties"]["AccessLogSetting"]["DestinationArn"] == {
        "Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]
    }

    off = deployed(ApiAccessLogging="false")["Resources"]
    stage = next(r for r in off.values() if r["Type"] == "AWS::ApiGateway::Stage")
    assert "ApiAccessLogGroup" not in off and "AccessLogSetting" not in stage["Properties"]

    assert "ApiGatewayAccount" in deployed(CreateApiGatewayAccountRole="true")["Resources"]


def test_parameters_the_code_and_local_stack_rely_on(sam_template: dict[str, Any]) -> None:
    parameters = sam_template["Parameters"]
    defaults = {name: spec.get("Default") for name, spec in parameters.items()}
    assert {
        "TargetRoleName": "ec2-isolation-execution",
        "ExternalId": "",
        "AllowedAccountIds": "",
        "MaxReceiveCount": 5,
        "MinSeverity": 7,
        "FindingTypePrefixes": "",
        "CoalesceWindowSeconds": 900,
        "OrganizationId": "",
        "WorkerMaxConcurrency": 10,
        "LogRetentionDays": 365,
        "ApiThrottleRateLimit": 20,
        "ApiThrottleBurstLimit": 40,
    }.items() <= defaults.items()
    assert parameters["ExternalId"]["NoEcho"] is True
    assert (parameters["MaxReceiveCount"]["MinValue"], parameters["MaxReceiveCount"]["MaxValue"]) == (2, 20)
    assert (
        parameters["WorkerMaxConcurrency"]["MinValue"],
        parameters["WorkerMaxConcurrency"]["MaxValue"],
    ) == (
        2,
        1000,
    )


TRIGGER_RULES = ("GuardDutyFindingRule", "TagChangeRule", "SecurityHubActionRule", "TamperRule")


@pytest.mark.parametrize("rule", TRIGGER_RULES)
def test_every_trigger_rule_is_on_the_default_bus_and_the_stacks_bus(deployed, rule: str) -> None:
    # Given the deployed stack (the Security Hub action on)
    resources = deployed(EnableSecurityHubAction="true")["Resources"]
    on_default, on_stack_bus = resources[rule], resources[rule.replace("Rule", "BusRule")]
    # Then the two rules differ only in their bus, and the stack's bus is its own
    assert on_default["Properties"]["EventBusName"] == "default"
    assert on_stack_bus["Properties"]["EventBusName"] == {"Fn::GetAtt": ["IsolationBus", "Name"]}
    assert resources["IsolationBus"]["Properties"]["Name"] == "ec2-isolation"
    strip = ("EventBusName", "Description")
    assert {k: v for k, v in on_default["Properties"].items() if k not in strip} == {
        k: v for k, v in on_stack_bus["Properties"].items() if k not in strip
    }


MEMBER_SOURCES = [
    "aws.tag",
    "aws.ec2",
    "aws.iam",
    # the guardrail events' EventBridge and CloudTrail calls
    "aws.events",
    "aws.cloudtrail",
    # CloudTrail's AttachInstances, RegisterTargets and RegisterInstancesWithLoadBalancer
    "aws.autoscaling",
    "aws.elasticloadbalancing",
]


@pytest.mark.parametrize(
    ("parameters", "condition"),
    [
        ({"OrganizationId": "o-a1b2c3d4e5"}, {"aws:PrincipalOrgID": "o-a1b2c3d4e5"}),
        (
            {"AllowedAccountIds": "111111111111,222222222222"},
            {"aws:PrincipalAccount": ["111111111111", "222222222222"]},
        ),
        (
            {"OrganizationId": "o-a1b2c3d4e5", "AllowedAccountIds": "111111111111"},
            {"aws:PrincipalOrgID": "o-a1b2c3d4e5", "aws:PrincipalAccount": ["111111111111"]},
        ),
    ],
    ids=["organization", "accounts", "both"],
)
def test_the_served_accounts_may_put_only_forwarded_sources_on_the_bus(
    deployed, parameters: dict[str, str], condition: dict[str, Any]
) -> None:
    # Given the deployed stack with an organization, a list of accounts or both
    resources = deployed(**parameters)["Resources"]
    statement = resources["IsolationBusPolicy"]["Properties"]["Statement"]
    # Then those accounts may put events of the sources their member stacks forward, and nothing else
    assert statement["Resource"] == {"Fn::GetAtt": ["IsolationBus", "Arn"]}
    assert statement["Effect"] == "Allow" and statement["Action"] == "events:PutEvents"
    assert statement["Condition"] == {"StringEquals": {**condition, "events:source": MEMBER_SOURCES}}
    # And never a finding, an action or an ec2-isolation event (an outcome, a guardrail event)
    for source in ("aws.guardduty", "aws.securityhub", "ec2-isolation"):
        assert source not in statement["Condition"]["StringEquals"]["events:source"]


def test_findings_reach_the_bus_only_from_this_accounts_regional_forwarders(deployed) -> None:
    # Given the deployed stack
    resources = deployed(OrganizationId="o-a1b2c3d4e5")["Resources"]
    # Then GuardDuty findings and Security Hub actions come from the forwarders' roles of this account
    statement = resources["IsolationBusForwarderPolicy"]["Properties"]["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    assert statement["Condition"] == {
        "ArnLike": {"aws:PrincipalArn": "arn:aws:iam::123456789012:role/ec2-isolation-forward-findings-*"},
        "StringEquals": {"events:source": ["aws.guardduty", "aws.securityhub"]},
    }
    forwarder = load_template(ROOT / "regional-forwarder.yml")
    assert forwarder["Resources"]["ForwardingRole"]["Properties"]["RoleName"] == {
        "Fn::Sub": "ec2-isolation-forward-findings-${AWS::Region}"
    }


@pytest.mark.parametrize(
    ("parameters", "deploys"),
    [
        ({}, False),
        ({"OrganizationId": "o-a1b2c3d4e5"}, True),
        ({"AllowedAccountIds": "111111111111"}, True),
        ({"OrganizationId": "o-a1b2c3d4e5", "AllowedAccountIds": "111111111111"}, True),
    ],
)
def test_a_stack_serving_no_named_accounts_is_refused(
    sam_template, parameters: dict[str, str], deploys: bool
) -> None:
    # Given the template's Rules assertions, evaluated as CloudFormation does before creating anything
    assertions = [a for rule in sam_template["Rules"].values() for a in rule["Assertions"]]
    probe = {
        "Parameters": sam_template["Parameters"],
        "Conditions": {f"Assertion{i}": a["Assert"] for i, a in enumerate(assertions)},
        "Resources": {
            f"Holds{i}": {"Type": "AWS::CloudFormation::WaitConditionHandle", "Condition": f"Assertion{i}"}
            for i in range(len(assertions))
        },
    }
    held = resolve(probe, parameters)["Resources"]
    # Then the deployment goes ahead only when an organization or accounts are named
    assert (len(held) == len(assertions)) is deploys
    assert all("OrganizationId" in a["AssertDescription"] for a in assertions)


def _denied(statement: dict[str, Any], context: dict[str, str]) -> bool:
    """Whether a Deny statement of ARN conditions applies to a request with `context` (IAM's rules: the
    conditions are ANDed, a negated operator on an absent key is true)."""
    for operator, keys in statement.get("Condition", {}).items():
        for key, values in keys.items():
            value = context.get(key)
            patterns = values if isinstance(values, list) else [values]
            if operator in ("ArnNotLike", "ArnNotEquals"):
                like = operator == "ArnNotLike"
                holds = value is None or not any(
                    fnmatch.fnmatchcase(value, p) if like else value == p for p in patterns
                )
            else:
                raise AssertionError(f"no evaluation for {operator}")
            if not holds:
                return False
    return True


QUEUE_ARNS = {
    name: {"Arn": f"arn:aws:sqs:eu-west-1:123456789012:{name}", "Ref": name}
    for name in ("IsolationQueue", "FollowUpQueue", "TamperQueue", "GuardrailQueue")
}
ROLE_ARNS = {
    name: {"Arn": f"arn:aws:iam::123456789012:role/ec2-isolation-{name}"}
    for name in ("IngestFunctionRole", "WorkerFunctionRole")
}
RULE_ARNS = {
    name: {"Arn": f"arn:aws:events:eu-west-1:123456789012:rule/{name}"}
    for name in (
        "GuardDutyFindingRule",
        "GuardDutyFindingBusRule",
        "TagChangeRule",
        "TagChangeBusRule",
        "SecurityHubActionRule",
        "SecurityHubActionBusRule",
        "TamperRule",
        "TamperBusRule",
        "GuardrailRule",
        "GuardrailBusRule",
    )
}
OPERATOR = "arn:aws:iam::123456789012:role/incident-operator"


def _send_denies(transformed, helpers, queue: str, policy: str, **parameters: str) -> list[dict[str, Any]]:
    resources = resolve(
        transformed,
        {"EnableSecurityHubAction": "true", **parameters},
        resources={**QUEUE_ARNS, **ROLE_ARNS, **RULE_ARNS},
    )["Resources"]
    statements = list(helpers.policy_statements(resources[policy]))
    return [
        s
        for s in statements
        if s["Effect"] == "Deny"
        and s["Action"] == "sqs:SendMessage"
        and s["Resource"] == QUEUE_ARNS[queue]["Arn"]
    ]


@pytest.mark.parametrize(
    ("queue", "policy", "senders"),
    [
        (
            "IsolationQueue",
            "IsolationQueuePolicy",
            [
                {"aws:PrincipalArn": ROLE_ARNS["IngestFunctionRole"]["Arn"]},
                *(
                    {"aws:SourceArn": RULE_ARNS[rule]["Arn"]}
                    for rule in RULE_ARNS
                    if not rule.startswith(("Tamper", "Guardrail"))
                ),
            ],
        ),
        (
            "FollowUpQueue",
            "FollowUpQueuePolicy",
            [{"aws:PrincipalArn": ROLE_ARNS["WorkerFunctionRole"]["Arn"]}],
        ),
        (
            "TamperQueue",
            "TamperQueuePolicy",
            [
                # the tamper function sends a call that waits for an isolation in flight again
                {"aws:PrincipalArn": ROLE_ARNS["WorkerFunctionRole"]["Arn"]},
                {"aws:SourceArn": RULE_ARNS["TamperRule"]["Arn"]},
                {"aws:SourceArn": RULE_ARNS["TamperBusRule"]["Arn"]},
            ],
        ),
        (
            "GuardrailQueue",
            "GuardrailQueuePolicy",
            [
                {"aws:SourceArn": RULE_ARNS["GuardrailRule"]["Arn"]},
                {"aws:SourceArn": RULE_ARNS["GuardrailBusRule"]["Arn"]},
            ],
        ),
    ],
)
def test_only_the_services_own_senders_and_a_listed_redrive_may_send(
    transformed, helpers, queue: str, policy: str, senders: list[dict[str, str]]
) -> None:
    # Given the queue's policy, without and with a principal that may redrive its dead-letter queue
    [deny] = _send_denies(transformed, helpers, queue, policy)
    [with_redrive] = _send_denies(transformed, helpers, queue, policy, QueueRedrivePrincipalArns=OPERATOR)
    others = [
        # an administrator of the security account (its own policy allows sqs:*)
        {"aws:PrincipalArn": "arn:aws:iam::123456789012:role/Admin"},
        # another function of the stack
        {"aws:PrincipalArn": "arn:aws:iam::123456789012:role/ec2-isolation-SweeperFunctionRole"},
        # another EventBridge rule of the account
        {"aws:SourceArn": "arn:aws:events:eu-west-1:123456789012:rule/someone-elses"},
    ]
    # Then the service's own senders are never denied
    for sender in senders:
        assert not _denied(deny, sender) and not _denied(with_redrive, sender), sender
    # And everyone else is, the operator too until listed in QueueRedrivePrincipalArns
    for other in [*others, {"aws:PrincipalArn": OPERATOR}]:
        assert _denied(deny, other), other
    assert not _denied(with_redrive, {"aws:PrincipalArn": OPERATOR})
    for other in others:
        assert _denied(with_redrive, other), other


def test_tamper_calls_have_their_own_queue_dead_letter_queue_and_function(deployed, helpers) -> None:
    # Given the deployed stack
    resources = deployed()["Resources"]
    # Then both tamper rules deliver to the tamper queue (its own DLQ), never to the isolation queue
    for rule in ("TamperRule", "TamperBusRule"):
        (target,) = resources[rule]["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["TamperQueue", "Arn"]}
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["TamperDeadLetterQueue", "Arn"]}}
    queue = resources["TamperQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["TamperDeadLetterQueue", "Arn"]}
    # And its own function consumes it, with partial batch failures and bounded concurrency
    (mapping,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
        and r["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["TamperQueue", "Arn"]}
    ]
    assert mapping["FunctionName"]["Ref"].startswith("TamperFunction")  # the function or its alias
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == 2
    function = resources["TamperFunction"]["Properties"]
    assert function["Handler"] == "worker.tamper_app.lambda_handler"
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]
    assert function["Environment"]["Variables"]["TAMPER_REPAIRS_PER_HOUR"] == 3
    # And its DLQ and TamperLoop have alarms
    alarms = {
        r["Properties"].get("MetricName") for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert "Isolation-tamper-loop" in alarms
    assert resources["TamperDeadLetterAlarm"]["Properties"]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["TamperDeadLetterQueue", "QueueName"]
    }


RELEASE_ROUTE = "execute-api:/*/POST/isolations/*/release"
EXEMPTION_ROUTES = ["execute-api:/*/POST/exemptions", "execute-api:/*/DELETE/exemptions/*"]
#: The routes that need IAM authorization (SigV4) as well as the key.
SIGNED_ROUTES = {
    ("/isolations/{isolation_id}/release", "post"),
    ("/exemptions", "post"),
    ("/exemptions/{exemption_id}", "delete"),
}


def _api_policy(sam_template: dict[str, Any], deployed: Any, **parameters: str) -> list[dict[str, Any]]:
    """The API's resource policy as CloudFormation deploys it with these parameters (SAM resolves the
    parameter in the policy during the transform, as CloudFormation's transform does)."""
    from tests.infra.resolver import resolve

    from local_stack.templates import sam_transform

    listed = {k: v.split(",") for k, v in parameters.items()}
    transformed = sam_transform(sam_template, listed)
    body = resolve(transformed, parameters)["Resources"]["IsolationApi"]["Properties"]["Body"]
    return list(body["x-amazon-apigateway-policy"]["Statement"])


def test_release_needs_iam_authorization_invoked_with_the_apis_own_permission(
    transformed: dict[str, Any],
) -> None:
    # Given the release route as SAM generates it
    body = transformed["Resources"]["IsolationApi"]["Properties"]["Body"]
    operation = body["paths"]["/isolations/{isolation_id}/release"]["post"]
    # Then it needs SigV4 (AWS_IAM) and the key, and API Gateway calls the function with its own
    # permission (InvokeRole NONE: no integration credentials, so callers need no lambda:InvokeFunction)
    assert operation["security"] == [{"AWS_IAM": []}, {"api_key": []}]
    assert body["components"]["securitySchemes"]["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert "credentials" not in operation["x-amazon-apigateway-integration"]
    permissions = [
        r["Properties"]
        for r in _of_type(transformed, "AWS::Lambda::Permission").values()
        if "release" in json.dumps(r["Properties"].get("SourceArn"))
    ]
    assert permissions and all(p["Principal"] == "apigateway.amazonaws.com" for p in permissions)


@pytest.mark.parametrize(
    "principals", ["", "arn:aws:iam::123456789012:role/responder,arn:aws:iam::*:role/ir-*"]
)
def test_the_resource_policy_lets_only_the_named_principals_release(
    sam_template: dict[str, Any], deployed: Any, principals: str
) -> None:
    # Given the API's resource policy with and without ReleasePrincipalArns
    statements = _api_policy(sam_template, deployed, ReleasePrincipalArns=principals)
    by_sid = {s["Sid"]: s for s in statements}
    named = principals.split(",") if principals else []
    # Then the key-only routes are allowed to everyone (a resource policy denies what it does not allow)
    key_only = by_sid["KeyOnlyRoutes"]
    assert (key_only["Effect"], key_only["Principal"]) == ("Allow", "*")
    assert set(key_only["Resource"]) == {
        "execute-api:/*/POST/isolate",
        "execute-api:/*/GET/isolations",
        "execute-api:/*/GET/isolations/*",
        "execute-api:/*/GET/exemptions",
        "execute-api:/*/GET/console",
    }
    assert RELEASE_ROUTE not in json.dumps(key_only)
    # And the release route is denied to every principal but the named ones (to all when none is named)
    deny = by_sid["ReleaseByNobodyElse"]
    assert (deny["Effect"], deny["Principal"], deny["Resource"]) == ("Deny", "*", RELEASE_ROUTE)
    if named:
        assert deny["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": named}}
        allow = by_sid["ReleaseByNamedPrincipals"]
        assert allow["Effect"] == "Allow" and allow["Resource"] == RELEASE_ROUTE
        assert allow["Condition"] == {"ArnLike": {"aws:PrincipalArn": named}}
    else:
        assert "Condition" not in deny
        assert "ReleaseByNamedPrincipals" not in by_sid
    # (and the exemptions' two statements: the contract's exemption routes came after the release)
    assert len(statements) == (3 if named else 2) + 1


@pytest.mark.parametrize("route", [("/exemptions", "post"), ("/exemptions/{exemption_id}", "delete")])
def test_changing_an_exemption_needs_iam_authorization_like_a_release(
    transformed: dict[str, Any], route: tuple[str, str]
) -> None:
    # Given an exemption-changing route as SAM generates it
    body = transformed["Resources"]["IsolationApi"]["Properties"]["Body"]
    path, verb = route
    operation = body["paths"][path][verb]
    # Then it needs SigV4 (AWS_IAM) and the key, invoked with API Gateway's own permission
    assert operation["security"] == [{"AWS_IAM": []}, {"api_key": []}]
    assert "credentials" not in operation["x-amazon-apigateway-integration"]
    # And listing them needs the key only
    assert body["paths"]["/exemptions"]["get"]["security"] == [{"api_key": []}]


@pytest.mark.parametrize(
    "principals", ["", "arn:aws:iam::123456789012:role/exempter,arn:aws:iam::*:role/ir-*"]
)
def test_the_resource_policy_lets_only_the_named_principals_change_exemptions(
    sam_template: dict[str, Any], deployed: Any, principals: str
) -> None:
    # Given the API's resource policy with and without ExemptionPrincipalArns
    statements = _api_policy(sam_template, deployed, ExemptionPrincipalArns=principals)
    by_sid = {s["Sid"]: s for s in statements}
    named = principals.split(",") if principals else []
    # Then creating and deleting exemptions is denied to every principal but the named ones (to all
    # when none is named), and is not among the key-only routes
    assert not set(EXEMPTION_ROUTES) & set(by_sid["KeyOnlyRoutes"]["Resource"])
    deny = by_sid["ExemptionsByNobodyElse"]
    assert (deny["Effect"], deny["Principal"], deny["Resource"]) == ("Deny", "*", EXEMPTION_ROUTES)
    if named:
        assert deny["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": named}}
        allow = by_sid["ExemptionsByNamedPrincipals"]
        assert allow["Effect"] == "Allow" and allow["Resource"] == EXEMPTION_ROUTES
        assert allow["Condition"] == {"ArnLike": {"aws:PrincipalArn": named}}
    else:
        assert "Condition" not in deny
        assert "ExemptionsByNamedPrincipals" not in by_sid
    # And the release keeps its own principals (none named here: nobody)
    assert "Condition" not in by_sid["ReleaseByNobodyElse"]


def test_exemptions_have_a_table_of_their_own(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    table = resources["ExemptionTable"]
    properties = table["Properties"]
    # Then it is kept like the records (a SKIPPED record names its exemption), with one index of its own
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"] == {"SSEEnabled": True}
    assert properties["DeletionProtectionEnabled"] is True
    assert "TimeToLiveSpecification" not in properties
    assert [index["IndexName"] for index in properties["GlobalSecondaryIndexes"]] == ["by-expiry"]
    # And no index of the isolation table reads an exemption's attributes
    indexed = {
        part["AttributeName"]
        for index in resources["IsolationTable"]["Properties"]["GlobalSecondaryIndexes"]
        for part in index["KeySchema"]
    }
    assert not indexed & {"active_shard", "expiry_epoch", "exemption_id"}
    # And every function that judges triggers or serves the API knows the table
    for name in ("IngestFunction", "WorkerFunction", "FollowUpFunction", "TamperFunction"):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert variables["EXEMPTION_TABLE_NAME"] == {"Ref": "ExemptionTable"}, name


def test_guardrail_events_have_their_queue_dead_letters_and_alarms(deployed) -> None:
    # Given the deployed stack
    resources = deployed(AlarmTopicArn="arn:aws:sns:us-east-1:123456789012:ops")["Resources"]
    # Then both guardrail rules send to the guardrail queue, with its DLQ as theirs
    for rule in ("GuardrailRule", "GuardrailBusRule"):
        [target] = resources[rule]["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["GuardrailQueue", "Arn"]}
        assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["GuardrailDeadLetterQueue", "Arn"]}
    assert resources["GuardrailRule"]["Properties"]["EventBusName"] == "default"
    # And the queue redrives to its DLQ, which an alarm watches
    redrive = resources["GuardrailQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["GuardrailDeadLetterQueue", "Arn"]}
    dlq_alarm = resources["GuardrailDeadLetterAlarm"]["Properties"]
    assert dlq_alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["GuardrailDeadLetterQueue", "QueueName"]}
    # And every guardrail event counts in the metric the function writes, which alarms on any
    from guardrail.events import METRIC

    alarm = resources["GuardrailAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("Ec2Isolation", METRIC)
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "ec2-isolation"}]
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "Sum",
        0,
        "GreaterThanThreshold",
    )
    assert alarm["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:ops"]
    # And the guardrail function can read its queue and publish on the bus, nothing else
    role = resources["GuardrailFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    actions = {a for s in role for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "events:PutEvents",
    }


def test_the_forwarding_audit_runs_on_its_schedule(deployed) -> None:
    resources = deployed(ForwardingAuditSchedule="rate(30 minutes)", MemberRegions="eu-west-1,us-east-1")[
        "Resources"
    ]
    [schedule] = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::Scheduler::Schedule"
        and r["Properties"]["Target"]["Arn"] == {"Ref": "AuditFunctionAliaslive"}
    ]
    assert schedule["Properties"]["ScheduleExpression"] == "rate(30 minutes)"
    variables = resources["AuditFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["AUDIT_REGIONS"] == "eu-west-1,us-east-1"
    assert variables["WORKER_ROLE_ARN"] == {"Fn::GetAtt": ["WorkerFunctionRole", "Arn"]}


#: API Gateway's own answers a client meets, with the status each must have (docs/api.md).
GATEWAY_ANSWERS = {
    "INVALID_API_KEY": 403,
    "MISSING_AUTHENTICATION_TOKEN": 403,
    "ACCESS_DENIED": 403,
    "REQUEST_TOO_LARGE": 413,
    "THROTTLED": 429,
    # Every other 4xx of API Gateway's (a bad signature, an expired token, a quota...): its own status
    "DEFAULT_4XX": None,
}


@pytest.mark.parametrize(("kind", "status"), GATEWAY_ANSWERS.items())
def test_every_4xx_of_api_gateway_has_the_apis_one_error_shape(
    transformed: dict[str, Any], kind: str, status: int | None
) -> None:
    # Given the API's gateway responses, as API Gateway substitutes their $context variables (the
    # message comes quoted; the response type bare)
    (api,) = _of_type(transformed, "AWS::ApiGateway::RestApi").values()
    response = api["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"][kind]
    text = response["responseTemplates"]["application/json"]
    rendered = text.replace("$context.error.messageString", json.dumps('Forbidden "quoted"\\ text'))
    rendered = rendered.replace("$context.error.responseType", "INVALID_SIGNATURE")

    # Then the answer has its status, is JSON and has the shape every error of the API has: a message,
    # and each fault with its field, a stable type and a message
    assert (int(response["statusCode"]) if "statusCode" in response else None) == status
    assert response["responseParameters"] == {"gatewayresponse.header.Content-Type": "'application/json'"}
    body = json.loads(rendered)
    assert set(body) == {"message", "errors"} and isinstance(body["message"], str) and body["message"]
    assert body["errors"] and all(set(error) == {"field", "type", "message"} for error in body["errors"])
    assert all(isinstance(value, str) and value for error in body["errors"] for value in error.values())
    # And no $context variable is left unsubstituted (a typo in a variable's name stays as text)
    assert "$" not in rendered
