"""tests.infra.resolver: the offline evaluator these checks read the templates with."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.infra.resolver import (
    TemplateError,
    as_json,
    event_pattern,
    load_template,
    parameter_values,
    resolve,
)

TEMPLATE = """\
Parameters:
  Name: {Type: String, Default: iso}
  Count: {Type: Number, Default: 5}
  Ratio: {Type: Number, Default: "2.5"}
  Ids: {Type: CommaDelimitedList, Default: "a, b,c"}
  Org: {Type: String, Default: ""}
  Required: {Type: String}
Mappings:
  Sizes:
    small: {Memory: 128}
Conditions:
  HasOrg: !Not [!Equals [!Ref Org, ""]]
  IsIso: !Equals [!Ref Name, iso]
  Both: !And [!Condition HasOrg, !Condition IsIso]
  Either: !Or [!Condition HasOrg, !Condition IsIso]
  FiveCount: !Equals [!Ref Count, "5"]
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${Name}-${AWS::Region}-${!Literal}"
      Delay: !Ref Count
      Redrive: {max: !Ref Count, dlq: !GetAtt Dlq.Arn}
      Tags:
        - !If [HasOrg, {Key: org, Value: !Ref Org}, !Ref AWS::NoValue]
        - {Key: name, Value: !Ref Name}
      Maybe: !If [HasOrg, !Ref Org, !Ref AWS::NoValue]
  Dlq:
    Type: AWS::SQS::Queue
  OrgOnly:
    Type: AWS::Events::EventBusPolicy
    Condition: HasOrg
    Properties: {Org: !Ref Org}
  Functions:
    Type: Custom::Thing
    Properties:
      Joined: !Join [",", [!Ref Name, x, !Ref Count]]
      JoinedSymbolic: !Join [",", [!Ref Name, !Ref Dlq]]
      Split: !Split [",", "p,q,r"]
      Selected: !Select [1, !Ref Ids]
      SelectSplit: !Select [4, !Split [":", "arn:aws:events:eu-west-1:111111111111:event-bus/default"]]
      Mapped: !FindInMap [Sizes, small, Memory]
      Encoded: !Base64 hello
      SubVars: !Sub ["${Prefix}/${Name}", {Prefix: !Join ["-", [p, !Ref Ratio]]}]
      SubResource: !Sub "arn:${AWS::Partition}:sqs:::${Dlq.QueueName}/${Name}/${!Kept}"
      SubRef: !Sub "${Dlq}"
      Pattern: !Sub '{"n": [{"numeric": [">=", ${Count}]}]}'
      Long: {"Fn::GetAtt": ["Dlq", "Arn"]}
      Generated: !Ref ApiApiKey
Outputs:
  OrgOut:
    Condition: HasOrg
    Value: !Ref Org
  QueueName:
    Value: !GetAtt Queue.QueueName
"""


@pytest.fixture
def template(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "t.yaml"
    path.write_text(TEMPLATE)
    return load_template(path)


def _resolve(template: dict[str, Any], **overrides: str) -> dict[str, Any]:
    return resolve(template, {"Required": "r", **overrides})


def test_dates_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("AWSTemplateFormatVersion: 2010-09-09\nResources: {}\n")
    assert load_template(path)["AWSTemplateFormatVersion"] == "2010-09-09"


def test_short_forms_load_as_long_forms(template) -> None:
    queue = template["Resources"]["Queue"]["Properties"]
    assert queue["Delay"] == {"Ref": "Count"}
    assert queue["Redrive"]["dlq"] == {"Fn::GetAtt": ["Dlq", "Arn"]}
    assert template["Conditions"]["Both"] == {"Fn::And": [{"Condition": "HasOrg"}, {"Condition": "IsIso"}]}


def test_parameters_take_defaults_then_overrides_with_types(template) -> None:
    values = parameter_values(template, {"Required": "r", "Count": "7"})
    assert values == {
        "Name": "iso",
        "Count": 7,
        "Ratio": 2.5,
        "Ids": ["a", "b", "c"],
        "Org": "",
        "Required": "r",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({}, "Required has no default"), ({"Required": "r", "Nope": "x"}, "unknown parameter"),
     ({"Required": "r", "Count": "many"}, "not a number")],
)  # fmt: skip
def test_bad_parameters_are_reported(template, overrides, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        resolve(template, overrides)


def test_conditions(template) -> None:
    assert _resolve(template)["Conditions"] == {
        "HasOrg": False,
        "IsIso": True,
        "Both": False,
        "Either": True,
        "FiveCount": True,
    }
    assert _resolve(template, Org="o-1", Name="x", Count="6")["Conditions"] == {
        "HasOrg": True,
        "IsIso": False,
        "Both": False,
        "Either": True,
        "FiveCount": False,
    }


def test_conditional_resources_outputs_and_novalue(template) -> None:
    # Given no organization
    stack = _resolve(template)
    # Then what depends on it is gone: resources, outputs, list items and keys
    assert "OrgOnly" not in stack["Resources"]
    assert "OrgOut" not in stack["Outputs"]
    queue = stack["Resources"]["Queue"]["Properties"]
    assert queue["Tags"] == [{"Key": "name", "Value": "iso"}]
    assert "Maybe" not in queue
    # And with one, it is there
    stack = _resolve(template, Org="o-1")
    assert stack["Resources"]["OrgOnly"]["Properties"] == {"Org": "o-1"}
    assert stack["Outputs"]["OrgOut"]["Value"] == "o-1"
    assert stack["Resources"]["Queue"]["Properties"]["Tags"][0] == {"Key": "org", "Value": "o-1"}


def test_refs_subs_and_pseudo_parameters(template) -> None:
    queue = _resolve(template)["Resources"]["Queue"]["Properties"]
    assert queue["QueueName"] == "iso-us-east-1-${Literal}"
    assert queue["Delay"] == 5
    assert queue["Redrive"] == {"max": 5, "dlq": {"Fn::GetAtt": ["Dlq", "Arn"]}}
    other = resolve(template, {"Required": "r"}, pseudo={"AWS::Region": "eu-west-1"})
    assert other["Resources"]["Queue"]["Properties"]["QueueName"] == "iso-eu-west-1-${Literal}"


def test_functions(template) -> None:
    props = _resolve(template)["Resources"]["Functions"]["Properties"]
    assert props["Joined"] == "iso,x,5"
    assert props["JoinedSymbolic"] == {"Fn::Join": [",", ["iso", {"Ref": "Dlq"}]]}
    assert props["Split"] == ["p", "q", "r"]
    assert props["Selected"] == "b"
    assert props["SelectSplit"] == "111111111111"
    assert props["Mapped"] == 128
    assert props["Encoded"] == base64.b64encode(b"hello").decode()
    assert props["SubVars"] == "p-2.5/iso"
    assert props["Pattern"] == '{"n": [{"numeric": [">=", 5]}]}'
    assert props["Long"] == {"Fn::GetAtt": ["Dlq", "Arn"]}
    # a resource SAM would generate stays a Ref
    assert props["Generated"] == {"Ref": "ApiApiKey"}


def test_unresolved_resources_keep_a_sub_symbolic(template) -> None:
    props = _resolve(template)["Resources"]["Functions"]["Properties"]
    # what resolved is substituted; the resource attribute and the escaped literal stay
    assert props["SubResource"] == {"Fn::Sub": "arn:aws:sqs:::${Dlq.QueueName}/iso/${!Kept}"}
    assert props["SubRef"] == {"Fn::Sub": "${Dlq}"}


def test_caller_maps_resources(template) -> None:
    stack = resolve(
        template,
        {"Required": "r"},
        resources={
            "Dlq": {"Ref": "https://dlq", "Arn": "arn:aws:sqs:us-east-1:123456789012:dlq", "QueueName": "dlq"}
        },
    )
    props = stack["Resources"]["Functions"]["Properties"]
    assert props["JoinedSymbolic"] == "iso,https://dlq"
    assert props["SubResource"] == "arn:aws:sqs:::dlq/iso/${Kept}"
    assert (
        stack["Resources"]["Queue"]["Properties"]["Redrive"]["dlq"]
        == "arn:aws:sqs:us-east-1:123456789012:dlq"
    )
    assert stack["Outputs"]["QueueName"]["Value"] == {"Fn::GetAtt": ["Queue", "QueueName"]}


def test_input_is_not_modified(template) -> None:
    before = repr(template)
    _resolve(template, Org="o-1")
    assert repr(template) == before


def test_json_properties_and_event_patterns() -> None:
    assert as_json('{"a": [1]}') == {"a": [1]}
    assert as_json({"a": [1]}) == {"a": [1]}
    assert event_pattern({"Properties": {"EventPattern": '{"source": ["x"]}'}}) == {"source": ["x"]}
    assert event_pattern({"EventPattern": {"source": ["x"]}}) == {"source": ["x"]}
    with pytest.raises(TemplateError, match="not resolved"):
        event_pattern({"EventPattern": {"source": [{"Ref": "Source"}]}})


def test_unknown_condition_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            Resources:
              R:
                Type: AWS::SQS::Queue
                Condition: Missing
            """
        )
    )
    with pytest.raises(TemplateError, match="unknown condition Missing"):
        resolve(load_template(path))


def test_not_a_template(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(TemplateError, match="not a template"):
        load_template(path)
