"""The local stack's STS trust check (`local_stack.trust.refusal`): what AWS's STS decides for
`sts:AssumeRole`, on trust policies of the shapes the project deploys."""

from __future__ import annotations

from typing import Any

import pytest

from local_stack.trust import Caller, refusal

WORKER = "arn:aws:iam::123456789012:role/ec2-isolation-worker"
WORKER_SESSION = Caller(
    "123456789012", WORKER, "arn:aws:sts::123456789012:assumed-role/ec2-isolation-worker/w"
)
OTHER_ROLE = Caller(
    "123456789012", "arn:aws:iam::123456789012:role/other", "arn:aws:sts::123456789012:assumed-role/other/o"
)
MANAGEMENT = Caller("123456789012", None, "arn:aws:sts::123456789012:user/moto")


def trust(principal: Any, condition: dict[str, Any] | None = None, effect: str = "Allow") -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": effect, "Principal": principal, "Action": "sts:AssumeRole"}
    if condition:
        statement["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [statement]}


EXECUTION_ROLE = trust({"AWS": WORKER}, {"StringEquals": {"sts:ExternalId": "expected"}})


def test_the_worker_with_the_right_external_id_may_assume_the_execution_role() -> None:
    assert refusal(EXECUTION_ROLE, WORKER_SESSION, {"sts:ExternalId": "expected"}) is None


@pytest.mark.parametrize("context", [{"sts:ExternalId": "wrong"}, {}], ids=["wrong", "missing"])
def test_a_wrong_or_missing_external_id_is_refused(context: dict[str, str]) -> None:
    # A positive operator on an absent key is false in IAM
    assert "sts:ExternalId" in str(refusal(EXECUTION_ROLE, WORKER_SESSION, context))


def test_another_principal_is_refused_even_with_the_external_id() -> None:
    assert refusal(EXECUTION_ROLE, OTHER_ROLE, {"sts:ExternalId": "expected"}) is not None
    assert refusal(EXECUTION_ROLE, MANAGEMENT, {"sts:ExternalId": "expected"}) is not None


def test_an_external_id_the_trust_does_not_ask_for_is_ignored() -> None:
    assert refusal(trust({"AWS": WORKER}), WORKER_SESSION, {"sts:ExternalId": "anything"}) is None


@pytest.mark.parametrize("principal", ["arn:aws:iam::123456789012:root", "123456789012", "*"])
def test_an_account_principal_trusts_every_principal_of_the_account(principal: str) -> None:
    # OrganizationAccountAccessRole trusts the management account's root
    assert refusal(trust({"AWS": principal}), MANAGEMENT, {}) is None
    assert refusal(trust({"AWS": "arn:aws:iam::999999999999:root"}), MANAGEMENT, {}) is not None


def test_a_service_principal_is_never_a_caller() -> None:
    assert refusal(trust({"Service": "ec2.amazonaws.com"}), WORKER_SESSION, {}) is not None


def test_a_deny_wins_and_negated_operators_hold_on_an_absent_key() -> None:
    policy = trust({"AWS": WORKER})
    policy["Statement"].append(
        {
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "sts:*",
            "Condition": {"StringNotEquals": {"sts:ExternalId": "expected"}},
        }
    )
    assert refusal(policy, WORKER_SESSION, {}) is not None  # absent: StringNotEquals is true
    assert refusal(policy, WORKER_SESSION, {"sts:ExternalId": "expected"}) is None


def test_if_exists_holds_on_an_absent_key() -> None:
    policy = trust({"AWS": WORKER}, {"StringEqualsIfExists": {"sts:ExternalId": "expected"}})
    assert refusal(policy, WORKER_SESSION, {}) is None
    assert refusal(policy, WORKER_SESSION, {"sts:ExternalId": "wrong"}) is not None


def test_a_condition_it_cannot_evaluate_refuses_and_says_so() -> None:
    policy = trust({"AWS": WORKER}, {"Bool": {"aws:MultiFactorAuthPresent": "true"}})
    assert "not evaluated locally" in str(refusal(policy, WORKER_SESSION, {}))
