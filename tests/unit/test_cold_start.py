"""Each Lambda's cold import stays small: it imports only what its own path needs, and caches nothing a
SnapStart snapshot must not hold (clients, sessions, credentials are made at the first invocation).

The figures (each handler's import against `import boto3`) are `make bench`'s; these tests check the
causes: what is imported and what is cached."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.aws import SERVICES

SOURCE = Path(__file__).resolve().parents[2] / "src"

#: Never on any Lambda's path: boto3 (its resource layer and s3transfer: `shared.aws` builds clients on
#: botocore alone), the test and local-stack tools, tracing.
NEVER = ("boto3", "s3transfer", "moto", "aws_xray_sdk", "local_stack", "yaml")
#: What the worker's handlers (containment and follow-up, tamper) have no use for. The partial batch
#: response is their own (`worker.sqs_batch`): no Powertools batch utility, whose import brings asyncio
#: and the event data classes.
NOT_THE_WORKERS = (
    "ingest",
    "sweeper",
    "asyncio",
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.data_classes",
    "aws_lambda_powertools.utilities.parser",
)
#: What one handler's path has no use for.
FOREIGN = {
    "ingest.app": (
        "worker",
        "sweeper",
        # The OpenAPI document is written by `make openapi`, never built by the handler.
        "ingest.openapi",
        "aws_lambda_powertools.event_handler",
        "aws_lambda_powertools.utilities.batch",
        "aws_lambda_powertools.utilities.parser",
    ),
    "worker.app": NOT_THE_WORKERS,
    "worker.tamper_app": NOT_THE_WORKERS,
    # The sweeper reads dead-lettered messages with the worker's parser, and runs nothing of the worker.
    "sweeper.app": (
        "ingest",
        "worker.app",
        "worker.runner",
        "worker.steps",
        "aws_lambda_powertools.event_handler",
    ),
}
ENV = {"TABLE_NAME": "t", "QUEUE_URL": "q", "AWS_DEFAULT_REGION": "us-east-1"}


def in_a_fresh_interpreter(code: str, **env: str) -> list[str]:
    """Run `code` in a fresh interpreter (as a cold start is); the JSON list its last line prints."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV, **env},
        check=True,
    )
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def imported_by(module: str, then: str = "", **env: str) -> list[str]:
    """The modules loaded after importing `module` (and running `then`)."""
    return in_a_fresh_interpreter(
        f"import sys, json, {module}\n{then}\nprint(json.dumps(sorted(sys.modules)))", **env
    )


@pytest.mark.parametrize("handler", sorted(FOREIGN))
def test_a_handler_imports_only_its_own_path(handler: str) -> None:
    # When a fresh interpreter imports the handler's module
    loaded = imported_by(handler)
    # Then nothing of another function, the tools or unused libraries came along
    unwanted = NEVER + FOREIGN[handler]
    assert [m for m in loaded if any(m == u or m.startswith(u + ".") for u in unwanted)] == []


@pytest.mark.parametrize("init", ["on-demand", "snap-start", "provisioned-concurrency"])
@pytest.mark.parametrize("handler", sorted(FOREIGN))
def test_an_initialized_handler_holds_no_client_session_or_settings(handler: str, init: str) -> None:
    # Given a handler's module imported, which is what a SnapStart snapshot captures
    check = (
        "from shared import aws, config\n"
        "assert aws.same_account_client.cache_info().currsize == 0, 'client'\n"
        "assert aws._default_session.cache_info().currsize == 0, 'session'\n"
        "assert not aws._sessions, 'assumed-role credentials'\n"
        "assert all(f.cache_info().currsize == 0 for f in (config.ingest_settings, config.worker_settings, config.sweeper_settings)), 'settings'\n"
        # An init ahead of invocations loads the service models (clients with placeholder keys, dropped):
        # the botocore session exists then, and has resolved no credential
        f"assert aws._core.cache_info().currsize == {int(init != 'on-demand')}, 'botocore session'\n"
        "assert aws._core.cache_info().currsize == 0 or aws._core()._credentials is None, 'credentials'"
    )
    # Then no client, session, credential or setting was made yet: every environment restored from the
    # snapshot makes its own at its first invocation
    imported_by(handler, then=check, AWS_LAMBDA_INITIALIZATION_TYPE=init)


#: The project's models a handler's module declared and has not built (pydantic builds a deferred model's
#: validator at its first use).
UNBUILT = (
    "from pydantic import BaseModel\n"
    "models, unbuilt = [BaseModel], []\n"
    "while models:\n"
    "    model = models.pop()\n"
    "    models.extend(model.__subclasses__())\n"
    "    if model.__module__.split('.')[0] in ('shared', 'worker', 'ingest', 'sweeper') and not model.__pydantic_complete__:\n"
    "        unbuilt.append(model.__name__)\n"
    "print(json.dumps(sorted(unbuilt)))"
)


def unbuilt_models(module: str, **env: str) -> list[str]:
    return in_a_fresh_interpreter(f"import json, {module}\n{UNBUILT}", **env)


@pytest.mark.parametrize("handler", sorted(FOREIGN))
def test_models_are_built_on_first_use_and_all_in_a_snapstart_init(handler: str) -> None:
    # A cold start builds none of the models at import: each is built at its first use, so the webhook's
    # never builds a GuardDuty finding's, nor the worker a webhook request's
    assert "IsolationRecord" in unbuilt_models(handler)
    # But SnapStart's init (the one the snapshot captures) builds them all: no restore builds one again
    assert unbuilt_models(handler, AWS_LAMBDA_INITIALIZATION_TYPE="snap-start") == []


def test_the_first_client_reads_the_model_directories_of_the_services_called_alone() -> None:
    # Given a process that has built no client yet
    script = """
import json, os, botocore
from shared import aws
data = os.path.join(os.path.dirname(botocore.__file__), "data")
read, listdir = [], os.listdir
os.listdir = lambda path=".": read.append(os.path.relpath(path, data)) or listdir(path)
# When it builds its first clients
for service in ("sts", "ec2"):
    aws.Session(credentials={"AccessKeyId": "a", "SecretAccessKey": "s", "SessionToken": "t"}).client(service)
print(json.dumps(read))
"""
    read = in_a_fresh_interpreter(script)
    # Then botocore looked into the directories of the services the functions call, not into all it ships
    assert read, "botocore read no directory: the check sees nothing"
    assert {path.split(os.sep)[0] for path in read} <= set(SERVICES), read


def test_every_service_the_code_calls_is_one_the_loader_knows() -> None:
    # Given the services named where the functions build clients or prepare them
    named: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        named.update(re.findall(r"\bclient\(\s*\"([a-z0-9-]+)\"", text))
        for arguments in re.findall(r"prepare_ahead_of_time\(([^)]*)\)", text):
            named.update(re.findall(r"\"([a-z0-9-]+)\"", arguments))
    # Then every one is in the loader's list (another would fail as an unknown service)
    assert named, "no client found: the scan is broken"
    assert named <= set(SERVICES), sorted(named - set(SERVICES))
