"""The local stack in one object: AWS (embedded moto or an endpoint), what template.yaml declares,
the HTTP API in front of the ingest handler and the worker on the queue.

    with LocalStack(seed_demo=True) as stack:
        status, body = stack.request("POST", "/isolate", {"instance_id": ..., ...})
        record = stack.wait_for(body["isolation_id"])
        ec2 = stack.client("ec2", account_id=record["account_id"])

The handlers read their settings from the environment, which is process-wide: run one stack per
process at a time. The environment is put back when the stack stops.

Functions run as in Lambda (`environments="process"`, the default): each SQS event source mapping of
the template invokes its function with batches of its `BatchSize` in at most its `MaximumConcurrency`
execution environments, each a process of its own (`local_stack.environments`); the scheduled functions
too. The ingest handler runs in this process, behind the HTTP API, and is the only function here, so no
module state (settings, clients, logger keys) is shared between functions or environments.
`environments="thread"` runs every function in this process, one invocation at a time: for tests that
inject faults or crashes in-process.

On embedded AWS each function runs as its execution role as the stack created it (a session of the
role in the function's environment variables, as Lambda gives it), so a member account's execution role
trusts the worker's role as deployed and moto's STS refuses everyone else (`local_stack.trust`). With
`environments="thread"` the process has one identity: the worker's role.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import secrets
import string
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import boto3

from local_stack.demo_org import DemoOrg, seed_demo
from local_stack.embedded import EmbeddedAws, EnvironmentPatch, aws_environment, default_region
from local_stack.environments import FunctionCode, InProcess, Processes, Runtime, Setup
from local_stack.event_source import SqsEventSource
from local_stack.http_api import ApiServer, gateway_responses
from local_stack.lambda_context import LambdaContext
from local_stack.organization import member_session
from local_stack.provision import FOLLOW_UP_QUEUE, QUEUE, Function, Provisioned, QueueSource, provision
from local_stack.scheduler import ScheduledFunction
from local_stack.templates import load_template, sam_transform
from local_stack.workloads import InstanceSpec

log = logging.getLogger("local_stack")

STACK_NAME = "ec2-isolation-local"
#: A queue's concurrency when its mapping sets no MaximumConcurrency (Lambda's own floor is 2).
DEFAULT_POLLERS = 2
TERMINAL = frozenset({"ISOLATED", "FAILED", "SKIPPED", "CHECKED"})

#: Local-stack defaults the user's environment may override: retries and eventual-consistency waits in
#: seconds rather than the deployed tens of seconds, so a local isolation ends quickly.
LOCAL_DEFAULTS = {
    "CONSISTENCY_WAIT_SECONDS": "2",
    "RETRY_BASE_DELAY_SECONDS": "1",
    "CONSISTENCY_RETRY_SECONDS": "2",
    "IN_FLIGHT_RETRY_SECONDS": "2",
}
#: Template variables the user's environment may override (the others must match what was created).
USER_OVERRIDABLE = frozenset({"POWERTOOLS_LOG_LEVEL"})


def project_root() -> Path:
    """The directory holding template.yaml: the checkout this package runs from, else the cwd."""
    for directory in Path(__file__).resolve().parents:
        if (directory / "template.yaml").is_file():
            return directory
    return Path.cwd()


def _handler(function: Function) -> Any:
    """The function's handler (`module.attribute`), imported."""
    module, attribute = function.handler.rsplit(".", 1)
    return getattr(importlib.import_module(module), attribute)


#: What an API key is made of when API Gateway generates one: letters and digits.
_KEY_ALPHABET = string.ascii_letters + string.digits


def new_api_key() -> str:
    """A key for the local API, shaped as API Gateway generates one (40 letters and digits): it never
    starts with "-", which a command line would read as an option (`--api-key -x...`)."""
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(40))


class LocalStack:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        aws_endpoint: str | None = None,
        api_key: str | None = None,
        target_role_name: str | None = None,
        allowed_accounts: list[str] | None = None,
        seed_demo: bool = False,
        region: str | None = None,
        template: str | Path | None = None,
        execution_template: str | Path | None = None,
        pollers: int | None = None,
        worker: bool = True,
        environment: dict[str, str] | None = None,
        demo_accounts: Sequence[str] | None = None,
        demo_instances: Sequence[InstanceSpec] | None = None,
        environments: Literal["process", "thread"] = "process",
        setups: Sequence[Setup] = (),
        warm: int = 1,
    ) -> None:
        """`demo_accounts`/`demo_instances`: with `seed_demo`, the member accounts (by name) and the
        instances of each account to seed instead of the demo's own (organization.MEMBER_ACCOUNT_NAMES,
        workloads.INSTANCES).

        `pollers`: each queue's concurrency (pollers and environments), instead of its mapping's
        `MaximumConcurrency`. `environments`: see the module's docstring. `setups`: installed in every
        environment process before its handler is imported (the ingest runs in this process: install
        them here yourself). `warm`: environments of each queue's function started at once (in the
        background) when the worker runs, so the first batches find them warm."""
        root = project_root()
        self.host = host
        self.port = port
        self.requested_endpoint = aws_endpoint
        self.api_key = api_key or new_api_key()
        self.target_role_name = target_role_name
        self.allowed_accounts = allowed_accounts
        self.seed = seed_demo
        self.region = region or default_region()
        self.template_path = Path(template) if template else root / "template.yaml"
        self.execution_template_path = (
            Path(execution_template) if execution_template else root / "iam-execution-role.yml"
        )
        self.pollers = pollers
        self.in_process = environments == "thread"
        self.setups = tuple(setups)
        self.warm = warm
        self.run_worker = worker
        self.extra_environment = dict(environment or {})
        self.demo_options: dict[str, Any] = {}
        if demo_accounts is not None:
            self.demo_options["account_names"] = tuple(demo_accounts)
        if demo_instances is not None:
            self.demo_options["instances"] = tuple(demo_instances)

        self.aws_endpoint = ""
        self.account_id = ""
        self.template: dict[str, Any] = {}  # template.yaml after the SAM transform
        self.provisioned: Provisioned | None = None
        self.demo: DemoOrg | None = None
        self.api: ApiServer | None = None
        #: One event source per SQS mapping of the template, by queue (logical id).
        self.event_sources: dict[str, SqsEventSource] = {}
        self.scheduled: list[ScheduledFunction] = []
        self.ingest_handler: Any = None
        self._runtimes: list[Runtime] = []
        self._embedded: EmbeddedAws | None = None
        self._env = EnvironmentPatch()
        self._sessions: dict[str, boto3.Session] = {}
        self._logger_levels: list[tuple[logging.Logger, int]] = []

    # --- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        # Bound first: a port in use fails at once, not after the demo organization is seeded. Nothing
        # is served before `start()`, once the handlers are set.
        self.api = ApiServer(
            handler=self._not_ready,
            api_key=self.api_key,
            routes=(),
            context_factory=lambda: None,
            host=self.host,
            port=self.port,
            openapi=self._openapi,
        )
        if self.requested_endpoint:
            self.aws_endpoint = self.requested_endpoint.rstrip("/")
        else:
            self._embedded = EmbeddedAws(
                self.host if self.host in ("127.0.0.1", "localhost") else "127.0.0.1"
            )
            self.aws_endpoint = self._embedded.start()
        self._env.set(aws_environment(self.aws_endpoint, self.region, embedded=self._embedded is not None))
        self.account_id = str(self.client("sts").get_caller_identity()["Account"])

        # The Security Hub custom action's rules (moto creates no action target, but its events are
        # matched and queued as deployed).
        overrides: dict[str, str] = {"EnableSecurityHubAction": "true"}
        # The forwarding audit is not scheduled locally (the local stack runs `rate` schedules only): the
        # demo's member stacks forward nothing (see local_stack.demo_org) and trust the local worker
        # role, so every run would find them drifted. Tests drive its handler against moto.
        overrides["ForwardingAuditSchedule"] = "cron(0 * * * ? *)"
        if self.target_role_name:
            overrides["TargetRoleName"] = self.target_role_name
        if self.allowed_accounts is not None:
            overrides["AllowedAccountIds"] = ",".join(self.allowed_accounts)
        self.template = sam_transform(load_template(self.template_path))
        self.provisioned = provision(
            self.template, client=self.client, parameters=overrides, stack_name=STACK_NAME
        )
        worker_role_arn = self.provisioned.worker_role_arn
        if self.in_process and self._embedded is not None and worker_role_arn:
            # One process, one identity: the functions that assume member roles (the worker's role).
            self._env.set(self._embedded.role_credentials(worker_role_arn, "ec2-isolation-local"))
        ingest, routes = self.provisioned.api()
        self._configure_functions(ingest)

        if self.seed:
            if not worker_role_arn:
                raise RuntimeError("template.yaml's worker function has no role the stack created")
            self.demo = seed_demo(
                region=self.region,
                execution_template=self.execution_template_path,
                target_role_name=self.provisioned.parameters["TargetRoleName"],
                worker_role_arn=worker_role_arn,
                external_id=self.provisioned.parameters.get("ExternalId") or None,
                **self.demo_options,
            )
            self._exempt_demo_instances()

        self.api.handler = self.ingest_handler
        self.api.routes = routes
        self.api.gateway_responses = gateway_responses(self.template)
        self.api.account_id = self.account_id
        self.api.context_factory = lambda: self._context(ingest)
        self.event_sources = {
            source.queue: self._event_source(source) for source in self.provisioned.queue_sources
        }
        self.scheduled = [
            self._scheduled(self.provisioned.functions[schedule.function], schedule.every_seconds)
            for schedule in self.provisioned.schedules
        ]
        self.api.start()
        for source in self.event_sources.values():
            runtime = source.runtime
            if self.warm and self.run_worker and isinstance(runtime, Processes):
                threading.Thread(
                    target=runtime.warm, args=(self.warm,), name="warm-environments", daemon=True
                ).start()
        if self.run_worker:
            self.resume_worker()

    @property
    def follow_up_source(self) -> SqsEventSource | None:
        """The follow-up function on the follow-up queue (one of the other queues' consumers)."""
        return self.event_sources.get(FOLLOW_UP_QUEUE)

    def _runtime(self, function: Function, limit: int) -> Runtime:
        """Where `function` runs: up to `limit` environment processes, or this process."""
        if self.in_process:
            runtime: Runtime = InProcess(_handler(function))
        else:
            # The function's own variables as this process has them (the user's overrides included);
            # the rest of the environment (the AWS endpoint) is inherited.
            environment = {name: os.environ.get(name, value) for name, value in function.environment.items()}
            if self._embedded is not None and function.role_arn:
                # As in Lambda, the function runs as its execution role (member roles trust the worker's).
                environment |= self._embedded.role_credentials(function.role_arn, function.name)
            runtime = Processes(
                FunctionCode(function.handler, environment=environment, setups=self.setups), limit=limit
            )
        self._runtimes.append(runtime)
        return runtime

    def _event_source(self, source: QueueSource) -> SqsEventSource:
        assert self.provisioned is not None
        function = self.provisioned.functions[source.function]
        concurrency = self.pollers or source.maximum_concurrency or DEFAULT_POLLERS
        return SqsEventSource(
            sqs_factory=lambda: self.client("sqs"),
            handler=self._runtime(function, concurrency),
            queue_url=self.provisioned.resources[source.queue],
            queue_arn=self.provisioned.queue_arns[source.queue],
            region=self.region,
            account_id=self.account_id,
            function_name=function.name,
            timeout_seconds=function.timeout_seconds,
            memory_mb=function.memory_mb,
            batch_size=source.batch_size,
            concurrency=concurrency,
        )

    @property
    def event_source(self) -> SqsEventSource | None:
        """The isolation queue's event source."""
        return self.event_sources.get(QUEUE)

    def _scheduled(self, function: Function, every_seconds: float) -> ScheduledFunction:
        runtime = self._runtime(function, 1)
        return ScheduledFunction(
            name=function.name,
            handler=lambda event, context: runtime.invoke(event, context).result,
            every_seconds=every_seconds,
            context_factory=lambda: self._context(function),
        )

    def _context(self, function: Function) -> LambdaContext:
        return LambdaContext(
            function_name=function.name,
            timeout_seconds=function.timeout_seconds,
            region=self.region,
            account_id=self.account_id,
            memory_limit_in_mb=function.memory_mb,
        )

    def _exempt_demo_instances(self) -> None:
        """The demo's exempt instances get their exemption in the stack's exemption table, as
        POST /exemptions creates it (its event too): nothing on an instance exempts it. The seeding is the
        stack's own work, not a request's: the functions' log lines of it are not printed (they would
        come before the banner, which lists the exempt instances)."""
        from datetime import timedelta

        from ingest import exemptions
        from shared.config import ingest_settings
        from shared.exemptions import ExemptionRequest
        from shared.models import iso8601, utcnow
        from shared.store.exemptions import ExemptionStore

        assert self.demo is not None
        settings = ingest_settings()
        store = ExemptionStore(settings.EXEMPTION_TABLE_NAME, client=self.client("dynamodb"))
        function_logger = logging.getLogger(os.environ.get("POWERTOOLS_SERVICE_NAME") or "ec2-isolation")
        level = function_logger.level
        function_logger.setLevel(logging.WARNING)
        try:
            for instance in (instance for instance in self.demo.instances if instance.exempt):
                request = ExemptionRequest(
                    account_id=instance.account_id,
                    instance_id=instance.instance_id,
                    reason="demo: a workload the security team chose to leave to its owners",
                    expires_at=iso8601(utcnow() + timedelta(days=30)),
                    requested_by="ec2-isolation serve --seed-demo",
                )
                with contextlib.suppress(exemptions.ExemptAlready):  # an endpoint seeded before
                    exemptions.create(
                        request,
                        caller_arn=None,
                        store=store,
                        events=self.client("events"),
                        bus=settings.EVENT_BUS_NAME,
                    )
        finally:
            function_logger.setLevel(level)

    @staticmethod
    def _not_ready(event: dict[str, Any], context: Any) -> Any:
        raise RuntimeError("the local stack is not started")

    def _configure_functions(self, ingest: Function) -> None:
        """The functions' environment from the template, then the ingest handler imported under it."""
        assert self.provisioned is not None
        template_env = self.provisioned.environment()
        self._env.set({k: v for k, v in template_env.items() if k not in USER_OVERRIDABLE})
        self._env.setdefault({k: v for k, v in template_env.items() if k in USER_OVERRIDABLE})
        self._env.setdefault(LOCAL_DEFAULTS)
        self._env.set(self.extra_environment)
        self._reset_handler_caches()
        self.ingest_handler = _handler(ingest)
        # Lambda reads the log level when the function's environment starts; here the ingest's logger may
        # have been created (by an earlier import) before this environment was set.
        service, level = os.environ.get("POWERTOOLS_SERVICE_NAME"), os.environ.get("POWERTOOLS_LOG_LEVEL")
        if service and level:
            function_logger = logging.getLogger(service)
            self._logger_levels.append((function_logger, function_logger.level))
            function_logger.setLevel(level.upper())

    @staticmethod
    def _reset_handler_caches() -> None:
        """Settings, clients, sessions and per-VPC caches belong to one stack's endpoint."""
        from shared import aws, config
        from shared.store import accounts, episodes, isolation_groups

        config.ingest_settings.cache_clear()
        config.worker_settings.cache_clear()
        config.sweeper_settings.cache_clear()
        config.guardrail_settings.cache_clear()
        config.audit_settings.cache_clear()
        aws.reset_caches()
        accounts.forget_noted()
        episodes.forget_backfilled()
        isolation_groups.forget_adopted()
        steps = sys.modules.get("worker.steps")  # imported here only when the worker runs in-process
        if steps is not None and hasattr(steps, "forget_caches"):
            steps.forget_caches()

    def _openapi(self) -> str:
        return str(importlib.import_module("ingest.openapi").document())

    def stop(self) -> None:
        self._stop_polling()
        for runtime in self._runtimes:
            runtime.close()
        self._runtimes.clear()
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        self._env.restore()
        while self._logger_levels:
            function_logger, level = self._logger_levels.pop()
            function_logger.setLevel(level)
        self._sessions.clear()
        with contextlib.suppress(ImportError):  # src/ not importable: nothing was cached
            self._reset_handler_caches()

    def pause_worker(self) -> None:
        """Stop polling the queue (messages stay there) and running schedules until `resume_worker`."""
        self._stop_polling()

    def _stop_polling(self) -> None:
        """Every schedule and queue poller is told to stop, then each is waited for: stopping takes the
        longest of their waits (a long poll, a batch in progress), not their sum (Ctrl-C on `serve`)."""
        pollers: list[ScheduledFunction | SqsEventSource] = [*self.scheduled, *self.event_sources.values()]
        for poller in pollers:
            poller.request_stop()
        for poller in pollers:
            poller.stop()

    def resume_worker(self) -> None:
        for source in self.event_sources.values():
            source.start()
        for scheduled in self.scheduled:
            scheduled.start()

    def run_schedules(self) -> list[Any]:
        """Run every scheduled function once now (the sweeper), as its next scheduled run would."""
        return [scheduled.run_once() for scheduled in self.scheduled]

    # --- using it ----------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        assert self.api is not None, "the stack is not started"
        return self.api.url

    def session(self, account_id: str | None = None) -> boto3.Session:
        """A boto3 session in the stack's account, or in `account_id` (an assumed role there)."""
        if account_id is None or account_id == self.account_id:
            # A new session each time: boto3's default session may hold credentials from before the
            # stack set its environment.
            return boto3.Session(region_name=self.region)
        if account_id not in self._sessions:
            self._sessions[account_id] = member_session(account_id, self.region)
        return self._sessions[account_id]

    def client(self, service: str, account_id: str | None = None) -> Any:
        return self.session(account_id).client(service, region_name=self.region)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        api_key: str | None = "",
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One HTTP request to the local API; returns (status, JSON body or raw text).

        `api_key`: "" sends the stack's key, None sends none, anything else is sent as given.
        """
        data: bytes | None
        if body is None or isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = json.dumps(body).encode("utf-8")
        all_headers = {"content-type": "application/json"} if data is not None else {}
        if api_key is not None:
            all_headers["x-api-key"] = api_key or self.api_key
        all_headers.update(headers or {})
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
                status, text = response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def records(self, instance_id: str, account_id: str | None = None) -> list[dict[str, Any]]:
        query = f"/isolations?instance_id={instance_id}" + (f"&account_id={account_id}" if account_id else "")
        status, body = self.request("GET", query)
        if status != 200:
            raise RuntimeError(f"GET {query} answered {status}: {body}")
        return list(body["items"])

    def wait_for(
        self, isolation_id: str, *, statuses: frozenset[str] | set[str] = TERMINAL, timeout: float = 30
    ) -> dict[str, Any]:
        """The record once its status is one of `statuses`; TimeoutError with the last one otherwise."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            status, last = self.request("GET", f"/isolations/{isolation_id}")
            if status == 200 and last.get("status") in statuses:
                return dict(last)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"isolation {isolation_id} not in {sorted(statuses)} after {timeout} s: {last}"
                )
            time.sleep(0.2)

    def wait_for_instance(
        self,
        instance_id: str,
        account_id: str | None = None,
        *,
        statuses: frozenset[str] | set[str] = TERMINAL,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """The newest record of an instance once its status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        items: list[dict[str, Any]] = []
        while True:
            items = self.records(instance_id, account_id)
            if items and items[0].get("status") in statuses:
                return items[0]
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no record of {instance_id} in {sorted(statuses)} after {timeout} s: {items}"
                )
            time.sleep(0.2)

    def queue_depth(self, *, dead_letter: bool = False, follow_up: bool = False) -> int:
        """Messages on the queue (visible + in flight + delayed), or on the dead-letter queue; of the
        follow-up queue with `follow_up`."""
        assert self.provisioned is not None
        if follow_up:
            p = self.provisioned
            url = p.follow_up_dead_letter_queue_url if dead_letter else p.follow_up_queue_url
        else:
            url = self.provisioned.dead_letter_queue_url if dead_letter else self.provisioned.queue_url
        return self.messages_on(url)

    def messages_on(self, url: str) -> int:
        """Messages on the queue `url` (visible + in flight + delayed)."""
        attributes = self.client("sqs").get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())

    def put_event(self, event: dict[str, Any], *, account_id: str | None = None) -> str:
        """Put an event (in the EventBridge envelope shape of tests/events) on a default bus."""
        entry = {
            "Source": event["source"],
            "DetailType": event["detail-type"],
            "Detail": json.dumps(event["detail"]),
            "Resources": list(event.get("resources") or []),
        }
        answer = self.client("events", account_id).put_events(Entries=[entry])
        if answer.get("FailedEntryCount"):
            raise RuntimeError(f"put_events failed: {answer['Entries']}")
        return str(answer["Entries"][0]["EventId"])
