"""Reading the project's templates: YAML with CloudFormation's short forms (cfn-lint's decoder), and
the SAM template transformed offline to the plain CloudFormation that AWS would deploy (samtranslator:
`CodeUri` becomes an `s3://` URI and no managed policy is looked up, so no AWS call is made)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

CODE_URI = "s3://ec2-isolation-artifacts/src.zip"


class TemplateError(ValueError):
    """The template cannot be read or transformed."""


def load_template(path: str | Path) -> dict[str, Any]:
    """A CloudFormation/SAM template (YAML or JSON) as plain dicts and lists, functions in long form
    and dates as text (as CloudFormation reads `Version: 2012-10-17`)."""
    from cfnlint.decode import decode

    template, problems = decode(str(path))
    if problems or not isinstance(template, dict):
        raise TemplateError(f"{path}: {'; '.join(str(problem) for problem in problems) or 'not a template'}")
    plain: dict[str, Any] = json.loads(json.dumps(template, default=str))  # YAML dates stay text
    return plain


def sam_transform(template: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SAM template as plain CloudFormation (parameters and functions left for CloudFormation).

    SAM itself resolves parameter references in a few places (the API's resource policy): with their
    defaults, or with `parameters` (as CloudFormation's transform does with the stack's values)."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    source = copy.deepcopy(template)
    functions = [
        r.get("Properties", {})
        for r in source["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    ]
    for body in [source.get("Globals", {}).get("Function", {}), *functions]:
        if "CodeUri" in body:
            body["CodeUri"] = CODE_URI
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name="us-east-1"))
    output = translator.translate(
        source, parameter_values=dict(parameters or {}), get_managed_policy_map=lambda: {}
    )
    transformed: dict[str, Any] = json.loads(json.dumps(output))
    return transformed
