"""`sts:AssumeRole` refused as STS refuses it, on the embedded moto server.

moto 5.2.5 lets any caller assume any role ARN, whether the role exists or not, and checks no trust
policy: an isolation in an account that never deployed iam-execution-role.yml, or with the wrong
`sts:ExternalId`, would go on (and end `InstanceNotFound`) where AWS refuses it at once. Installed on
the embedded server only (an endpoint given with `--aws-endpoint` answers for itself), this layer asks
before moto answers:

- the role must exist in the account its ARN names;
- its trust policy must allow the caller: a statement allowing `sts:AssumeRole` to the caller's role
  (sessions of a role match the role's ARN), user, account (`123456789012` or `...:root`) or `*`, and
  no statement denying it;
- the statement's conditions must hold, with IAM's rules for an absent key (a positive operator is
  false, a negated one true, `...IfExists` true): operators `String*`, `Arn*` and their `IfExists`
  forms, on `sts:ExternalId`, `aws:PrincipalAccount` and `aws:PrincipalArn`. A condition on any other
  key or with any other operator is not evaluated here: the statement is taken not to apply (so an
  Allow refuses), and the log says so.

A refusal is STS's: `AccessDenied` (HTTP 403) with the message "User: <caller> is not authorized to
perform: sts:AssumeRole on resource: <role ARN>", the same whatever the reason (STS does not say which);
the reason is logged. Not evaluated: the caller's own identity policies (a cross-account assumption
needs an Allow on both sides in AWS; here only the trust side is checked), session policies, service
control policies and service principals (only the local stack, acting as Lambda, starts role sessions
for a service).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("local_stack.trust")

ACTION = "sts:AssumeRole"
_NEGATED = ("StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike")
_OPERATORS = (
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "ArnEquals",
    "ArnLike",
    *_NEGATED,
)


class NotEvaluated(Exception):  # noqa: N818 - a condition this layer cannot evaluate
    """A condition operator or key the local stack does not evaluate."""


@dataclass(frozen=True)
class Caller:
    """Who asks: the account, the principal ARN a trust policy names (a role for its sessions, a user),
    and the identity STS's message names (the session's ARN)."""

    account_id: str
    principal_arn: str | None
    identity_arn: str


def refusal(trust_policy: dict[str, Any], caller: Caller, context: dict[str, str]) -> str | None:
    """Why the trust policy does not let `caller` assume the role (None: it does). `context`: the
    request's condition keys (`sts:ExternalId` when given)."""
    keys = {
        **context,
        "aws:PrincipalAccount": caller.account_id,
        **({"aws:PrincipalArn": caller.principal_arn} if caller.principal_arn else {}),
    }
    allowed = False
    unevaluated: list[str] = []
    for statement in _statements(trust_policy):
        if not _names_action(statement) or not _names_principal(statement.get("Principal"), caller):
            continue
        try:
            holds = _conditions_hold(statement.get("Condition") or {}, keys)
        except NotEvaluated as exc:
            unevaluated.append(str(exc))
            if statement.get("Effect") == "Deny":
                return f"a Deny statement's condition is not evaluated locally ({exc})"
            continue
        if not holds:
            continue
        if statement.get("Effect") == "Deny":
            return "a statement of the trust policy denies it"
        allowed = allowed or statement.get("Effect") == "Allow"
    if allowed:
        return None
    if unevaluated:
        return f"the trust policy's condition is not evaluated locally ({'; '.join(unevaluated)})"
    if "sts:ExternalId" in json.dumps(trust_policy):
        return "the trust policy does not allow the caller with this sts:ExternalId"
    return "the trust policy does not allow the caller"


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy.get("Statement") or []
    return [statements] if isinstance(statements, dict) else list(statements)


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _names_action(statement: dict[str, Any]) -> bool:
    return any(fnmatch.fnmatchcase(ACTION.lower(), a.lower()) for a in _listed(statement.get("Action")))


def _names_principal(principal: Any, caller: Caller) -> bool:
    """Whether a `Principal` element names the caller (a `NotPrincipal` statement never applies)."""
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    for name in _listed(principal.get("AWS")):
        if name == "*" or name in (caller.account_id, f"arn:aws:iam::{caller.account_id}:root"):
            return True
        if caller.principal_arn is not None and name == caller.principal_arn:
            return True
    return False  # Service and Federated principals are never a caller with credentials


def _conditions_hold(conditions: dict[str, Any], keys: dict[str, str]) -> bool:
    for operator, tests in conditions.items():
        base = operator.removesuffix("IfExists")
        if base not in _OPERATORS or not isinstance(tests, dict):
            raise NotEvaluated(f"operator {operator}")
        for key, expected in tests.items():
            if key not in ("sts:ExternalId", "aws:PrincipalAccount", "aws:PrincipalArn"):
                raise NotEvaluated(f"key {key}")
            actual = keys.get(key)
            if actual is None:
                if operator.endswith("IfExists") or base in _NEGATED:
                    continue
                return False
            matched = any(_matches(base, pattern, actual) for pattern in _listed(expected))
            if matched == (base in _NEGATED):
                return False
    return True


def _matches(operator: str, pattern: str, actual: str) -> bool:
    if operator.endswith("IgnoreCase"):
        return pattern.lower() == actual.lower()
    if operator.endswith("Like"):
        return fnmatch.fnmatchcase(actual, pattern)
    return pattern == actual


# --- on the moto server ---------------------------------------------------------------------------------

_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")


def refuse_untrusted_assume_role() -> Callable[[], None]:
    """Make the moto server in this process refuse an AssumeRole that STS refuses; returns what puts
    moto back."""
    from moto.core.exceptions import AccessDeniedError
    from moto.sts.responses import TokenResponse

    original = TokenResponse.__dict__["assume_role"]

    def assume_role(self: Any) -> Any:
        role_arn = str(self._get_param("RoleArn") or "")
        external_id = self._get_param("ExternalId")
        caller = _caller(self)
        why = _why_refused(role_arn, caller, {"sts:ExternalId": external_id} if external_id else {})
        if why is not None:
            log.info("AssumeRole of %s by %s refused: %s", role_arn, caller.identity_arn, why)
            raise AccessDeniedError(user_arn=caller.identity_arn, action=f"{ACTION} on resource: {role_arn}")
        return original(self)

    TokenResponse.assume_role = assume_role  # type: ignore[method-assign]

    def restore() -> None:
        TokenResponse.assume_role = original  # type: ignore[method-assign]

    return restore


def _caller(response: Any) -> Caller:
    """The caller of a moto request, from its access key (moto's own bookkeeping of who holds it)."""
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends
    from moto.utilities.utils import get_partition

    account_id = str(response.current_account)
    partition = get_partition(response.region)
    found = _ACCESS_KEY.search(response.headers.get("Authorization") or "")
    access_key = urllib.parse.unquote(found.group(1)) if found else ""
    sts = sts_backends[account_id][partition]
    _, identity_arn, _ = sts.get_caller_identity(access_key, response.region)
    session = sts.get_assumed_role_from_access_key(access_key)
    if session is not None:
        return Caller(account_id, session.role_arn, identity_arn)
    user = iam_backends[account_id][partition].get_user_from_access_key_id(access_key)
    return Caller(account_id, user.arn if user is not None else None, identity_arn)


def _why_refused(role_arn: str, caller: Caller, context: dict[str, str]) -> str | None:
    from moto.iam.models import iam_backends

    found = re.fullmatch(r"arn:(aws[a-z-]*):iam::([0-9]{12}):role/(?:.*/)?[\w+=,.@-]+", role_arn)
    if found is None:
        return "not a role ARN"
    partition, account_id = found.groups()
    try:
        role = iam_backends[account_id][partition].get_role_by_arn(role_arn)
    except Exception:  # moto's NotFoundException (and an unknown partition)
        return f"no role {role_arn} in account {account_id}"
    document = role.assume_role_policy_document
    if isinstance(document, str):
        document = json.loads(urllib.parse.unquote(document) if document.startswith("%") else document)
    return refusal(document, caller, context)
