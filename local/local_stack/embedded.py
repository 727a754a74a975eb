"""AWS for the local stack: an embedded moto server on a free loopback port, and the process
environment that points every boto3 client at it.

The handlers build their clients from the environment (`AWS_ENDPOINT_URL` is honoured by botocore
itself), so the same code that runs in Lambda talks to moto here, assumed-role clients included.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from local_stack.iam_limits import inline_policy_limit_enforced
from local_stack.trust import refuse_untrusted_assume_role

log = logging.getLogger("local_stack.embedded")

DEFAULT_REGION = "eu-west-1"
#: moto does not expire credentials; a function's session lasts as long as a local stack runs.
_FUNCTION_SESSION_SECONDS = 12 * 3600
_FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class EmbeddedAws:
    """A moto server in this process. Start it, read `endpoint`, stop it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._server: Any = None
        self._env = EnvironmentPatch()
        self._restore: list[Callable[[], None]] = []
        self.endpoint = ""

    def start(self) -> str:
        self._env.set(
            {
                # Read when moto creates an account's IAM backend: AWSDenyAll and the other AWS managed
                # policies exist only when moto loads them.
                "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
                # Would override the account of assumed-role credentials: no member accounts.
                "MOTO_ACCOUNT_ID": None,
            }
        )
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

        from moto.dynamodb.responses import DynamoHandler
        from moto.server import ThreadedMotoServer

        # moto gap: two DynamoDB transactions at once can both pass their conditions, and a cancelled
        # one puts back a copy of the table taken when it started (or fails copying it: "dictionary
        # changed size during iteration"); AWS makes each request atomic. The worker's environments
        # call it concurrently.
        self._restore.append(one_request_at_a_time(DynamoHandler))
        # moto gap: any caller assumes any role ARN, existing or not; STS refuses (local_stack.trust).
        self._restore.append(refuse_untrusted_assume_role())
        # moto gap: a role's inline policies may pass IAM's limit; IAM refuses (local_stack.iam_limits).
        self._restore.append(inline_policy_limit_enforced())
        self._restore.append(unimplemented_actions_logged_in_one_line())
        self._restore.append(patterns_match_arrays_of_objects())
        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint = f"http://{host}:{port}"
        # moto's backends are process-wide: an earlier server (or stack) in this process left its
        # resources there. Embedded AWS starts empty.
        reset = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(reset, timeout=30):  # noqa: S310 - our own loopback server
            pass
        return self.endpoint

    def role_credentials(self, role_arn: str, session_name: str) -> dict[str, str]:
        """A session of `role_arn` as Lambda starts one for a function's execution role (the service
        assumes it: no caller's trust to check), as the environment variables Lambda sets."""
        from moto.sts.models import sts_backends

        account_id = role_arn.split(":")[4]
        backend: Any = sts_backends[account_id]["aws"]  # moto's annotations want strings for the Nones
        session = backend.assume_role(
            region_name=default_region(),
            role_session_name=session_name[:64],
            role_arn=role_arn,
            policy=None,
            duration=_FUNCTION_SESSION_SECONDS,
            external_id=None,
        )
        return {
            "AWS_ACCESS_KEY_ID": session.access_key_id,
            "AWS_SECRET_ACCESS_KEY": session.secret_access_key,
            "AWS_SESSION_TOKEN": session.session_token,
        }

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        while self._restore:
            self._restore.pop()()
        self._env.restore()


def serialized(call_action: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A moto response class's `call_action` that answers one request at a time."""
    lock = threading.RLock()

    @functools.wraps(call_action)
    def one_at_a_time(self: Any) -> Any:
        with lock:
            return call_action(self)

    return one_at_a_time


def one_request_at_a_time(handler: type) -> Callable[[], None]:
    """moto answers the requests `handler` (a moto response class) serves one at a time, as if each were
    atomic (AWS's own guarantee for a single request): moto is not safe under concurrent requests.
    Returns what puts it back."""
    original = handler.__dict__["call_action"]
    handler.call_action = serialized(original)  # type: ignore[attr-defined]

    def restore() -> None:
        handler.call_action = original  # type: ignore[attr-defined]

    return restore


#: What the service makes of an action moto does not implement, for the one line that says so.
_UNIMPLEMENTED_MEANS = {
    "iam:SimulatePrincipalPolicy": "a dry run records the steps it checks with it as unverified",
}


def unimplemented_actions_logged_in_one_line() -> Callable[[], None]:
    """An action moto does not implement is answered as before (HTTP 500, a body botocore cannot
    parse) but logged in one line naming it, not with the server's traceback. Returns what puts it
    back."""
    from moto.core.responses import BaseResponse
    from werkzeug.exceptions import InternalServerError

    original = BaseResponse.__dict__["call_action"]

    @functools.wraps(original)
    def call_action(self: Any) -> Any:
        try:
            return original(self)
        except NotImplementedError as exc:
            action = f"{self.service_name}:{self._get_action()}"
            means = _UNIMPLEMENTED_MEANS.get(action)
            log.warning(
                "embedded AWS (moto) does not implement %s: answered HTTP 500%s",
                action,
                f" ({means})" if means else "",
            )
            raise InternalServerError(description=f"moto does not implement {action}") from exc

    BaseResponse.call_action = call_action  # type: ignore[method-assign]

    def restore() -> None:
        BaseResponse.call_action = original  # type: ignore[method-assign]

    return restore


class EnvironmentPatch:
    """Set environment variables for the stack's lifetime and put the previous values back after."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def set(self, values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            if name not in self._saved:
                self._saved[name] = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def setdefault(self, values: Mapping[str, str]) -> None:
        """Set only what the user has not set: their environment wins."""
        self.set({name: value for name, value in values.items() if name not in os.environ})

    def restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved.clear()


def aws_environment(endpoint: str, region: str, *, embedded: bool) -> dict[str, str | None]:
    """What every client of the process needs to reach `endpoint` in `region`.

    Embedded moto gets fake credentials, never the user's (no real key is sent anywhere, and no profile
    or SSO refresh is attempted). Against another endpoint the credentials are the user's.
    """
    env: dict[str, str | None] = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }
    if embedded:
        env.update(_FAKE_CREDENTIALS)
        env.update({"AWS_SESSION_TOKEN": None, "AWS_PROFILE": None, "AWS_DEFAULT_PROFILE": None})
    return env


def default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def _flatten_like_aws(node: Any, prefix: str = "", result: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event as EventBridge matches it: each leaf by its dotted path; an array of objects gives each
    of its objects' leaves, their values gathered in a list (a pattern matches when any value does)."""
    result = {} if result is None else result
    if isinstance(node, dict):
        for name, value in node.items():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(value, dict) and value:
                _flatten_like_aws(value, path, result)
            elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
                for item in value:
                    for leaf, found in _flatten_like_aws(item, path).items():
                        gathered = result.setdefault(leaf, [])
                        gathered.extend(found if isinstance(found, list) else [found])
            else:
                result[path] = value
    return result


def patterns_match_arrays_of_objects() -> Callable[[], None]:
    """moto gap: its event-pattern matcher does not look inside arrays of objects (a CloudTrail
    `tagSet.items[].key`, `resourcesSet.items[].resourceId`), which EventBridge matches field by field.
    Returns what puts moto's matcher back."""
    from moto.events.models import EventPattern

    original = EventPattern.__dict__["_flatten_dict"]
    EventPattern._flatten_dict = staticmethod(_flatten_like_aws)  # type: ignore[method-assign]

    def restore() -> None:
        EventPattern._flatten_dict = original  # type: ignore[method-assign]

    return restore
