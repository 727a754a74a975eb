"""cfn-lint on both templates and on the SAM output: zero findings, warnings included.

cfn-lint on a SAM template does not lint what SAM generates (the event source mapping, the stage, the
permissions), so the transformed template is linted too. A rule is ignored only inline, in the resource's
Metadata, with its reason next to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.api import ManualArgs, lint_file

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
MEMBER_TEMPLATE = ROOT / "iam-execution-role.yml"
FORWARDER_TEMPLATE = ROOT / "regional-forwarder.yml"
REGIONS = ["us-east-1", "eu-west-1"]


def _findings(path: Path) -> list[str]:
    matches = lint_file(path, ManualArgs(regions=REGIONS))
    return [f"{m.rule.id} {m.message} ({m.filename}:{m.linenumber})" for m in matches]


@pytest.mark.parametrize("path", [TEMPLATE, MEMBER_TEMPLATE, FORWARDER_TEMPLATE], ids=lambda p: p.name)
def test_template_has_no_cfn_lint_findings(path: Path) -> None:
    # Given a template of the repository
    # When cfn-lint checks it
    findings = _findings(path)
    # Then it finds nothing, not even a warning
    assert findings == []


def test_sam_output_has_no_cfn_lint_findings(transformed_path: Path) -> None:
    # Given template.yaml transformed by SAM, offline
    # When cfn-lint checks the plain CloudFormation that SAM generated
    findings = _findings(transformed_path)
    # Then it finds nothing either
    assert findings == []


def test_cfn_lint_reports_a_broken_template(tmp_path: Path) -> None:
    # Given a template with a misspelt event source option (the mistake the SAM lint exists for)
    broken = tmp_path / "broken.json"
    broken.write_text(
        '{"Resources": {"M": {"Type": "AWS::Lambda::EventSourceMapping", "Properties": {'
        '"FunctionName": "f", "EventSourceArn": "arn:aws:sqs:us-east-1:123456789012:q",'
        '"FunctionResponseTypes": ["ReportBatchItemFailure"]}}}}'
    )
    # When cfn-lint checks it
    findings = _findings(broken)
    # Then it says so: the zero above is not a linter that checks nothing
    assert findings


def _checkov() -> str | None:
    candidates = [os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov")]
    candidates.append(str(Path(sys.executable).parent / "checkov"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("checkov")


def test_checkov_passes_every_template() -> None:
    checkov = _checkov()
    if checkov is None:
        if os.environ.get("CHECKOV"):  # `make test` names it: missing there is a failure, not a skip
            pytest.fail(f"CHECKOV={os.environ['CHECKOV']} does not exist")
        pytest.skip("checkov is not installed (set CHECKOV=/path/to/checkov)")
    # Given every template, each skip justified inline in Metadata
    # When checkov scans them, offline
    result = subprocess.run(
        [checkov, "--framework", "cloudformation", "--compact", "--quiet", "--skip-download",
         "-f", str(TEMPLATE), "-f", str(MEMBER_TEMPLATE), "-f", str(FORWARDER_TEMPLATE)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )  # fmt: skip
    # Then no check fails
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Failed checks: 0" in result.stdout
