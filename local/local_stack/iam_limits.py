"""IAM's limit on a role's inline policies, enforced on moto as IAM enforces it.

moto 5.2.5 stores inline policies of any total size on a role. IAM allows 10,240 characters of inline
policy per role, all its inline policies together, whitespace not counted, and refuses a `PutRolePolicy`
that would pass it: `LimitExceeded` (HTTP 409), "Maximum policy size of 10240 bytes exceeded for role
<name>". The worker relies on that refusal (its credentials step reads only its own policy before it
writes), so the local stack and the in-process tests refuse the same write.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from typing import Any

#: IAM's quota on the inline policies of one role, together.
ROLE_INLINE_POLICIES_LIMIT = 10_240


def inline_policy_limit_enforced() -> Callable[[], None]:
    """Make moto's IAM refuse a role's inline policy that takes the role past IAM's limit; returns what
    puts moto back."""
    from moto.iam.exceptions import LimitExceededException
    from moto.iam.models import IAMBackend

    original = IAMBackend.__dict__["put_role_policy"]

    def put_role_policy(self: Any, role_name: str, policy_name: str, policy_json: str) -> None:
        role = self.get_role(role_name)
        others = sum(_size(document) for name, document in role.policies.items() if name != policy_name)
        if others + _size(policy_json) > ROLE_INLINE_POLICIES_LIMIT:
            raise LimitExceededException(
                f"Maximum policy size of {ROLE_INLINE_POLICIES_LIMIT} bytes exceeded for role {role_name}"
            )
        original(self, role_name, policy_name, policy_json)

    IAMBackend.put_role_policy = put_role_policy  # type: ignore[method-assign]

    def restore() -> None:
        IAMBackend.put_role_policy = original  # type: ignore[method-assign]

    return restore


def _size(document: Any) -> int:
    """A policy's characters as IAM counts them: whitespace outside its strings not counted."""
    if isinstance(document, str):
        text = urllib.parse.unquote(document) if document.startswith("%") else document
        try:
            document = json.loads(text)
        except ValueError:
            return len("".join(text.split()))
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False))
