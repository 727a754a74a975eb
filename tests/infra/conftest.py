"""Fixtures of the template checks: both templates, read and resolved offline, and the SAM template
transformed to plain CloudFormation by samtranslator (no AWS call: CodeUri becomes an s3:// URI and no
managed policy is looked up)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.infra.resolver import resolve

from local_stack.templates import load_template, sam_transform

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
MEMBER_TEMPLATE = ROOT / "iam-execution-role.yml"

#: A member template needs the worker's role; any well-formed ARN will do offline.
WORKER_ROLE_ARN = "arn:aws:iam::111111111111:role/ec2-isolation-WorkerFunctionRole-ABC123"
MEMBER_DEFAULTS = {"WorkerRoleArn": WORKER_ROLE_ARN}


@pytest.fixture(scope="session")
def sam_template() -> dict[str, Any]:
    """template.yaml as written (SAM), intrinsic functions in long form."""
    return load_template(TEMPLATE)


@pytest.fixture(scope="session")
def member_template() -> dict[str, Any]:
    """iam-execution-role.yml as written."""
    return load_template(MEMBER_TEMPLATE)


@pytest.fixture(scope="session")
def transformed(sam_template: dict[str, Any]) -> dict[str, Any]:
    """template.yaml after the SAM transform: what CloudFormation deploys (parameters unresolved)."""
    return sam_transform(sam_template)


@pytest.fixture(scope="session")
def transformed_path(transformed: dict[str, Any], sam_template: dict[str, Any], tmp_path_factory) -> Path:
    """The transformed template in a file, for cfn-lint."""
    output = copy.deepcopy(transformed)
    for name, resource in output["Resources"].items():
        # SAM gives its usage plan and key a DependsOn that a Ref already implies (W3005): SAM's output,
        # not ours, and harmless.
        if name not in sam_template["Resources"] and "DependsOn" in resource:
            resource.setdefault("Metadata", {}).setdefault("cfn-lint", {}).setdefault("config", {})[
                "ignore_checks"
            ] = ["W3005"]
    path = tmp_path_factory.mktemp("sam") / "template.transformed.json"
    path.write_text(json.dumps(output, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def deployed(transformed: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """The transformed template resolved with parameter overrides: `deployed(OrganizationId="o-...")`."""

    def build(**overrides: str) -> dict[str, Any]:
        return resolve(transformed, overrides)

    return build


@pytest.fixture(scope="session")
def member_stack(member_template: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """iam-execution-role.yml resolved; the worker role ARN is set, other parameters default."""

    def build(**overrides: str) -> dict[str, Any]:
        return resolve(member_template, {**MEMBER_DEFAULTS, **overrides})

    return build


def policy_statements(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every statement of a role's inline policies, of a policy resource, or of a resource policy."""
    properties = resource.get("Properties", {})
    documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
    if "PolicyDocument" in properties:
        documents.append(properties["PolicyDocument"])
    for document in documents:
        statements = document["Statement"]
        yield from statements if isinstance(statements, list) else [statements]
    if resource.get("Type") == "AWS::Events::EventBusPolicy" and "Statement" in properties:
        yield properties["Statement"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def actions_of(resource: dict[str, Any], *, effect: str = "Allow") -> set[str]:
    return {
        action
        for statement in policy_statements(resource)
        if statement["Effect"] == effect
        for action in as_list(statement["Action"])
    }


@pytest.fixture(scope="session")
def helpers() -> Any:
    """The statement helpers above, for test modules (which do not import conftest)."""

    class Helpers:
        policy_statements = staticmethod(policy_statements)
        as_list = staticmethod(as_list)
        actions_of = staticmethod(actions_of)

    return Helpers
