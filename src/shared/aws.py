"""AWS access: the one place that builds clients and assumed-role sessions, and maps AWS errors.

- `client(service, ...)` builds every AWS client of the service and applies the registered event
  hooks, so tests and the benchmark can observe or inject on every call (`add_event_hook`).
- `session_for_account(...)` assumes the execution role in a target account and caches the session per
  (account, region, role) until shortly before its credentials expire: an STS call on the path to
  containment is time the attacker gets for free.
Errors of these calls are classified by `shared.errors.classify`.

Endpoints come from the environment (`AWS_ENDPOINT_URL`, honoured by botocore itself), which is how the
local stack points everything at its moto server.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, Protocol

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, DataNotFoundError
from botocore.loaders import Loader

from shared.errors import classify

# Standard retry mode already retries throttling and 5xx a few times with jitter; what survives that
# is handed to the queue. Short timeouts: a hung call must not eat the Lambda's whole budget.
_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=3,
    read_timeout=10,
)

#: Refresh an assumed-role session when less than this is left of its credentials.
_REFRESH_MARGIN_SECONDS = 300
#: Requested lifetime of assumed-role credentials (1 h: the role-chaining maximum, the safe default).
_SESSION_SECONDS = 3600

_hooks: list[tuple[str, Callable[..., Any]]] = []
_hooks_lock = threading.Lock()


def add_event_hook(event_name: str, handler: Callable[..., Any]) -> Callable[[], None]:
    """Register a botocore event hook on every client built from now on; returns its remover.

    `event_name` is a botocore event such as `before-call.ec2.ModifyNetworkInterfaceAttribute` or
    `before-call` for all. A handler that raises `ClientError` injects that AWS error.
    """
    entry = (event_name, handler)
    with _hooks_lock:
        _hooks.append(entry)

    def remove() -> None:
        with _hooks_lock:
            if entry in _hooks:
                _hooks.remove(entry)

    return remove


class _HookDispatcher:
    """Registered on each client once; forwards to whatever hooks are registered at call time."""

    def __call__(self, event_name: str = "", **kwargs: Any) -> Any:
        with _hooks_lock:
            handlers = [h for name, h in _hooks if event_name == name or event_name.startswith(name + ".")]
        result = None
        for handler in handlers:
            outcome = handler(event_name=event_name, **kwargs)
            if outcome is not None:
                result = outcome
        return result


class Sessions(Protocol):
    """What the service uses of a session: clients and partitions (a boto3 `Session` has both)."""

    def client(
        self, service_name: str, region_name: str | None = None, config: Config | None = None
    ) -> Any: ...

    def get_partition_for_region(self, region_name: str) -> str: ...


class Session:
    """A session on botocore alone, used like a boto3 `Session` (tests and the local stack pass those):
    importing boto3 imports its resource layer and s3transfer, which every cold start would pay for.

    Every `Session` of the process builds its clients from one botocore session (`_core`), each with its
    own credentials: botocore loads a service's model once per botocore session (EC2's is megabytes of
    JSON), so a new assumed-role session in another account builds its EC2 client in milliseconds
    rather than parsing the model again, which at Lambda's CPU share costs a cold account a third of a
    second."""

    def __init__(self, *, credentials: dict[str, Any] | None = None, region: str | None = None) -> None:
        self._keys = (
            {
                "aws_access_key_id": credentials["AccessKeyId"],
                "aws_secret_access_key": credentials["SecretAccessKey"],
                "aws_session_token": credentials["SessionToken"],
            }
            if credentials is not None
            else {}
        )
        self._region = region

    def client(self, service_name: str, region_name: str | None = None, config: Config | None = None) -> Any:
        # A botocore session may not build clients in two threads at once (the batch's threads share it).
        with _core_lock:
            return _core().create_client(
                service_name, region_name=region_name or self._region, config=config, **self._keys
            )

    def get_partition_for_region(self, region_name: str) -> str:
        return str(_core().get_partition_for_region(region_name))


_core_lock = threading.Lock()
#: The services whose clients `prepare_clients` has prepared (or is preparing) in this process.
_prepared: set[str] = set()
#: Keys of the clients `prepare_clients` builds and drops: they make no call, and no credential is
#: resolved for them.
_PLACEHOLDER_KEYS = {
    "AccessKeyId": "placeholder",
    "SecretAccessKey": "placeholder",
    "SessionToken": "placeholder",
}


#: Every AWS service the functions call (a test checks that the code builds clients of no other).
SERVICES = ("autoscaling", "dynamodb", "ec2", "elb", "elbv2", "events", "iam", "sqs", "sts")


class _Loader(Loader):
    """botocore's loader of service models, checking a service's name against `SERVICES`.

    Before it loads a service's first model of a kind, botocore's own loader lists every service it
    ships that has one: some 440 directories and 900 directory reads, twice (the API model and the
    endpoint rules), which cost the process's first client about 20 ms of CPU on the project's machine
    and more on a cold Lambda disk. This one looks in the directories of `SERVICES` alone; what it loads,
    and from where, is botocore's."""

    def list_available_services(self, type_name: str) -> list[str]:
        return [service for service in SERVICES if self._has(service, type_name)]

    def _has(self, service: str, type_name: str) -> bool:
        try:
            self.list_api_versions(service, type_name)
        except DataNotFoundError:
            return False
        return True


@lru_cache(maxsize=1)
def _core() -> botocore.session.Session:
    """The process's botocore session: made at the first client (never at import: SnapStart)."""
    core = botocore.session.Session()
    extra = core.get_config_variable("data_path")  # AWS_DATA_PATH, as botocore's own loader reads it
    paths = (
        [os.path.expanduser(os.path.expandvars(path)) for path in extra.split(os.pathsep)] if extra else None
    )
    core.register_component("data_loader", _Loader(extra_search_paths=paths))
    return core


def prepare_clients(services: tuple[str, ...], region: str) -> None:
    """Build and drop one client of each service not prepared yet: their models and client classes are
    then loaded in this process (a later client of the service takes milliseconds). For an init ahead of
    invocations (`shared.ahead_of_time`), and during the first AssumeRole: the clients hold placeholder
    keys and make no call, so no credential and no client is kept."""
    for service in services:
        with _core_lock:
            if service in _prepared:
                continue
            _prepared.add(service)
        Session(credentials=_PLACEHOLDER_KEYS, region=region).client(service)


def _preparing(service: str, region: str) -> threading.Thread | None:
    """`prepare_clients` for `service` in a thread, when this process has not prepared it yet."""
    with _core_lock:
        if service in _prepared:
            return None
    thread = threading.Thread(
        target=prepare_clients, args=((service,), region), name=f"prepare-{service}", daemon=True
    )
    thread.start()
    return thread


def client(service: str, *, session: Sessions | None = None, region: str | None = None) -> Any:
    """Build a client; every client in the project comes from here."""
    built = (session or _default_session()).client(service, region_name=region, config=_CONFIG)
    for event in ("before-call", "after-call", "before-parameter-build"):
        built.meta.events.register(event, _HookDispatcher())
    return built


@lru_cache(maxsize=1)
def _default_session() -> Session:
    return Session()


@cache
def same_account_client(service: str) -> Any:
    """Clients of the service's own account (SQS, DynamoDB): built once, reused by warm starts."""
    return client(service)


def reset_caches() -> None:
    """Forget cached clients and sessions (tests, and the local stack between runs)."""
    same_account_client.cache_clear()
    _default_session.cache_clear()
    _core.cache_clear()
    with _core_lock:
        _prepared.clear()
    with _sessions_lock:
        _sessions.clear()


# --- assumed-role sessions -------------------------------------------------------------------------


@dataclass
class AccountSession:
    """An assumed-role session in one target account and region, with its clients."""

    account_id: str
    region: str
    session: Sessions
    expires_at: float
    _clients: dict[str, Any]

    def client(self, service: str) -> Any:
        # A batch's threads share the session: boto3 sessions may not build clients concurrently.
        with _clients_lock:
            if service not in self._clients:
                self._clients[service] = client(service, session=self.session, region=self.region)
            return self._clients[service]

    @property
    def fresh(self) -> bool:
        return self.expires_at - time.time() > _REFRESH_MARGIN_SECONDS


_clients_lock = threading.Lock()
_sessions: dict[tuple[str, str, str, str], AccountSession] = {}
_sessions_lock = threading.Lock()


def role_arn(account_id: str, role_name: str) -> str:
    return f"arn:aws:iam::{account_id}:role/{role_name}"


def session_for_account(
    account_id: str,
    region: str,
    role_name: str,
    *,
    external_id: str | None = None,
    base: Sessions | None = None,
    sts: Any = None,
    session_policy: str | None = None,
    session_name: str = "ec2-isolation-worker",
) -> AccountSession:
    """Assume `role_name` in `account_id`; cached until shortly before the credentials expire.
    `session_policy`: a session policy that narrows what the session may do (the forwarding audit's)."""
    key = (account_id, region, role_name, session_policy or "")
    with _sessions_lock:
        cached = _sessions.get(key)
    if cached is not None and cached.fresh:
        return cached

    arn = role_arn(account_id, role_name)
    params: dict[str, Any] = {
        "RoleArn": arn,
        "RoleSessionName": session_name,
        "DurationSeconds": _SESSION_SECONDS,
    }
    if external_id:
        params["ExternalId"] = external_id
    if session_policy:
        params["Policy"] = session_policy
    if sts is None:
        sts = client("sts", session=base, region=region) if base else same_account_client("sts")
    # While STS answers, the EC2 client's model is loaded (once per process): CPU work done during a
    # network wait, off the first containment's path.
    preparing = _preparing("ec2", region) if base is None else None
    try:
        credentials = sts.assume_role(**params)["Credentials"]
    except ClientError as exc:
        raise classify(exc, permanent_code="RoleNotAssumable", context=f"cannot assume {arn}") from exc
    except BotoCoreError as exc:
        raise classify(exc, context=f"cannot assume {arn}") from exc
    finally:
        if preparing is not None:
            preparing.join()

    session = Session(credentials=credentials, region=region)
    expiration = credentials["Expiration"]
    if isinstance(expiration, datetime):
        expires_at = expiration.astimezone(UTC).timestamp()
    else:  # pragma: no cover - botocore always parses timestamps
        expires_at = time.time() + _SESSION_SECONDS
    account_session = AccountSession(account_id, region, session, expires_at, {})
    with _sessions_lock:
        _sessions[key] = account_session
    return account_session


def forget_session(account_id: str, region: str, role_name: str) -> None:
    """Drop a cached session (after the target account rejected its credentials)."""
    with _sessions_lock:
        _sessions.pop((account_id, region, role_name, ""), None)
