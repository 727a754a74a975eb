"""Dry runs: how a step finds out whether it could make its change, without making it.

- An EC2 call that takes `DryRun` is made with `DryRun=True`: AWS checks the caller's permissions and
  answers `DryRunOperation` (it would have succeeded: `would`) or `UnauthorizedOperation` (`failed`, with
  that error). Any other error is the one the real call would meet, raised as it is.
- IAM, Auto Scaling and load-balancer actions, and the instance-profile association calls (which take no
  `DryRun`): `iam:SimulatePrincipalPolicy` on the execution role itself. Its answer accounts for the
  role's policies, its permissions boundary and the organization's service control policies: `allowed`
  is `would`; anything else is `failed`, naming the action, the resource and the decision. An Auto
  Scaling group's ARN holds an id nothing in the step reads, so it is simulated with `*` in its place.
- Where the simulator cannot answer (moto does not implement it: the local stack; or a member stack
  older than the permission), the step is `unverified`, saying why; the simulator is not asked again
  within the same dry run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError

from shared.errors import PermanentError, error_code
from shared.models import StepRecord, StepStatus

#: What a dry run calls beside the steps' own reads: the simulator, on the execution role only.
PERMISSIONS = ("iam:SimulatePrincipalPolicy",)
DRY_RUN_ANSWER = "DryRunOperation"
UNAUTHORIZED = "UnauthorizedOperation"
#: How IAM refuses an action (the code the real call would meet when the simulator says no).
ACCESS_DENIED = "AccessDenied"
_SIMULATOR_REFUSED = frozenset({"AccessDenied", "AccessDeniedException"})


@dataclass(frozen=True)
class Check:
    """One permission check of a step: `would`, `unverified` or `failed`, and what it was about."""

    status: StepStatus
    detail: str
    #: Why it could not be verified (`unverified` only).
    unverified_because: str = ""


def ec2_dry_run(what: str, call: Callable[..., Any], **params: Any) -> Check:
    """`call(DryRun=True, **params)`: whether EC2 would let the execution role do `what`."""
    try:
        call(DryRun=True, **params)
    except ClientError as exc:
        code = error_code(exc)
        if code == DRY_RUN_ANSWER:
            return Check(StepStatus.WOULD, f"would {what} (EC2 DryRun: permitted)")
        if code == UNAUTHORIZED:
            return Check(StepStatus.FAILED, f"{UNAUTHORIZED}: cannot {what}: {_message(exc)}")
        raise
    # Nothing the steps call ignores DryRun (moto 5.2.5 included): if one ever did, it changed something.
    raise PermanentError("DryRunIgnored", f"{what}: the call did not honour DryRun=True")


@dataclass(frozen=True)
class Action:
    """An IAM action on resources, with the condition keys the member role's statements test."""

    name: str
    resources: Sequence[str]
    what: str
    context: dict[str, str] = field(default_factory=dict)


@dataclass
class PolicySimulator:
    """`iam:SimulatePrincipalPolicy` on the execution role, for one dry run."""

    iam: Any
    role_arn: str
    #: Why the simulator cannot answer (asked once per dry run).
    unavailable: str | None = None

    def check(self, action: Action) -> Check:
        if self.unavailable is not None:
            return Check(StepStatus.UNVERIFIED, f"would {action.what}", self.unavailable)
        try:
            results = self._simulate(action)
        except (NotImplementedError, ResponseParserError) as exc:
            # moto 5.2.5 does not implement SimulatePrincipalPolicy: in process it raises
            # NotImplementedError, as a server it answers an HTML 500 that botocore cannot parse.
            self.unavailable = (
                f"the endpoint does not implement iam:SimulatePrincipalPolicy ({type(exc).__name__})"
            )
            return self.check(action)
        except ClientError as exc:
            if error_code(exc) not in _SIMULATOR_REFUSED:
                raise
            self.unavailable = (
                f"the execution role may not call iam:SimulatePrincipalPolicy ({error_code(exc)}): "
                "update the member stack"
            )
            return self.check(action)
        refused = [
            f"{action.name} on {resource}: {decision}{why}"
            for resource, decision, why in results
            if decision != "allowed"
        ]
        if refused:
            return Check(
                StepStatus.FAILED,
                f"{ACCESS_DENIED}: cannot {action.what}: {'; '.join(refused)} (IAM simulation)",
            )
        return Check(StepStatus.WOULD, f"would {action.what} (IAM simulation: allowed)")

    def _simulate(self, action: Action) -> list[tuple[str, str, str]]:
        """(resource, decision, why) of every evaluation of the action."""
        params: dict[str, Any] = {
            "PolicySourceArn": self.role_arn,
            "ActionNames": [action.name],
            "ResourceArns": list(action.resources),
        }
        if action.context:
            params["ContextEntries"] = [
                {"ContextKeyName": name, "ContextKeyValues": [value], "ContextKeyType": "string"}
                for name, value in action.context.items()
            ]
        found: list[tuple[str, str, str]] = []
        for page in self.iam.get_paginator("simulate_principal_policy").paginate(**params):
            for result in page["EvaluationResults"]:
                why = _why(result)
                per_resource = result.get("ResourceSpecificResults") or []
                if not per_resource:
                    found.append((result.get("EvalResourceName", "*"), result["EvalDecision"], why))
                found.extend(
                    (r.get("EvalResourceName", "*"), r["EvalResourceDecision"], why) for r in per_resource
                )
        return found


def _why(result: dict[str, Any]) -> str:
    """What, beside the role's own policies, decided (service control policies, the boundary)."""
    reasons = []
    if result.get("OrganizationsDecisionDetail", {}).get("AllowedByOrganizations") is False:
        reasons.append("denied by a service control policy")
    if result.get("PermissionsBoundaryDecisionDetail", {}).get("AllowedByPermissionsBoundary") is False:
        reasons.append("denied by the permissions boundary")
    if result.get("MissingContextValues"):
        reasons.append(f"missing context {', '.join(result['MissingContextValues'])}")
    return f" ({'; '.join(reasons)})" if reasons else ""


def simulate(simulator: PolicySimulator, *actions: Action) -> list[Check]:
    return [simulator.check(action) for action in actions]


def outcome(name: str, checks: list[Check], settled: str) -> StepRecord:
    """A step's dry-run outcome: `failed` if any check failed, else `unverified` if any could not be
    verified, else `would`; `already` (with `settled`) when nothing needs changing."""
    if not checks:
        return StepRecord.already(name, settled)
    details = [check.detail for check in checks]
    failed = [check.detail for check in checks if check.status is StepStatus.FAILED]
    if failed:
        # The first failure first: its code is the record's error code.
        return StepRecord.failed(name, "; ".join(failed + [d for d in details if d not in failed]))
    tail = f"; {settled}" if settled else ""
    because = list(dict.fromkeys(c.unverified_because for c in checks if c.status is StepStatus.UNVERIFIED))
    if because:
        return StepRecord.unverified(
            name, "; ".join(details) + f" (not verified: {'; '.join(because)})" + tail
        )
    return StepRecord.would(name, "; ".join(details) + tail)


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
