"""What a handler's init prepares when it runs ahead of any invocation.

Lambda says why it initializes an environment in `AWS_LAMBDA_INITIALIZATION_TYPE`. Two inits run ahead
of the invocations they serve: `snap-start` (with SnapStart on, the init runs once per published version
and every new environment resumes from a snapshot of it) and `provisioned-concurrency` (environments
initialized before any request). Work done in those is off every invocation's path, so they also:

- builds every model of the project (`shared.models.Model` otherwise builds each on its first use);
- loads the models and client classes of the AWS services the function calls (`shared.aws.
  prepare_clients`: clients built with placeholder keys and dropped).

What it never does: resolve credentials, assume a role, make a call, read a setting or keep a client.
Every restored environment does those at its first invocation (tests/unit/test_cold_start.py).
An on-demand init does none of it: it runs on the first invocation's path anyway, and would only pay
for models and clients that this invocation may not need.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from shared.aws import prepare_clients
from shared.models import Model

#: A region for the prepared clients (they make no call; the function's own when Lambda sets it).
_REGION = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


#: The inits that run ahead of the invocations they serve.
AHEAD = frozenset({"snap-start", "provisioned-concurrency"})


def prepare_ahead_of_time(*services: str) -> None:
    """In an init ahead of invocations: every declared model built, `services`' clients prepared."""
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") not in AHEAD:
        return
    pending: list[type[BaseModel]] = [Model]
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if not model.__pydantic_complete__:
            model.model_rebuild()
    prepare_clients(services, _REGION)
