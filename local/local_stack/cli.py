"""`ec2-isolation`: the responders' client (`local_stack.client`) of a deployed or local API, and the
local stack.

ec2-isolation serve [--host 127.0.0.1] [--port 8080] [--aws-endpoint URL] [--api-key KEY]
                    [--target-role-name NAME] [--allowed-accounts ID,ID] [--seed-demo]
ec2-isolation demo
ec2-isolation isolate|status|list|watch|release|exempt|exemptions|unexempt ... [--api URL] [--api-key KEY]
              [--json]
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from local_stack import client
from local_stack.arguments import parser

if TYPE_CHECKING:
    from local_stack.demo_org import DemoOrg

log = logging.getLogger("local_stack")
#: The top-level modules of pyproject's `local` extra: the local stack's, not the client's.
LOCAL_EXTRA = frozenset({"moto", "werkzeug", "samtranslator", "cfnlint", "flask", "yaml"})


def _install_stop_handlers(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def serve(args: argparse.Namespace) -> int:
    from local_stack.stack import LocalStack

    stop = threading.Event()
    _install_stop_handlers(stop)
    stack = LocalStack(
        host=args.host,
        port=args.port,
        aws_endpoint=args.aws_endpoint,
        api_key=args.api_key,
        target_role_name=args.target_role_name,
        allowed_accounts=args.allowed_accounts,
        seed_demo=args.seed_demo,
        template=args.template,
        pollers=args.pollers,
    )
    try:
        stack.start()
    except OSError as exc:
        hint = (
            f": port {args.port} is taken; choose another with --port N (`make run PORT=N`), or 0 for any free port"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        print(f"ec2-isolation: cannot serve on {args.host}:{args.port}: {exc}{hint}", file=sys.stderr)
        return 1
    except Exception as exc:
        log.debug("start failed", exc_info=True)
        print(f"ec2-isolation: the local stack did not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        assert stack.provisioned is not None
        kind = "embedded moto" if not args.aws_endpoint else "external"
        print(
            f"aws endpoint: {stack.aws_endpoint} ({kind}; account {stack.account_id}, region {stack.region})"
        )
        print(
            f"queue: {stack.provisioned.queue_url} (dead letters: {stack.provisioned.dead_letter_queue_url})"
        )
        print(f"table: {stack.provisioned.table_name}")
        print(f"api key: {stack.api_key}" if not args.api_key else "api key: as given by --api-key")
        for route in stack.api.routes if stack.api is not None else ():
            if route.signed:
                principals = (
                    "ExemptionPrincipalArns"
                    if route.resource.startswith("/exemptions")
                    else "ReleasePrincipalArns"
                )
                print(
                    f"{route.method} {route.resource}: checks the API key only here; deployed it also "
                    f"needs IAM authorization (SigV4) by a principal of {principals}"
                )
        if stack.demo is not None:
            print(
                demo_summary(stack.demo, api_url=stack.api_url, api_key=stack.api_key, command=_invoked_as())
            )
        key_fragment = stack.api_key if not args.api_key else "<your key>"
        print(f"console: {stack.api_url}/console#key={key_fragment}")
        print(f"ready on {stack.api_url}", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping", flush=True)
    finally:
        stack.stop()
    return 0


def _invoked_as() -> str:
    """This command as it was started (`.venv/bin/ec2-isolation` under `make run`, which a fresh shell
    does not have on its PATH), so that the commands it prints work when pasted in the same directory."""
    given = sys.argv[0] if sys.argv else ""
    return shlex.quote(given) if os.path.basename(given) == "ec2-isolation" else "ec2-isolation"


def demo_summary(org: DemoOrg, *, api_url: str, api_key: str, command: str = "ec2-isolation") -> str:
    """The demo organization's ids and ready-to-paste commands: curl's, then the client's (`command`: how
    to run it)."""
    lines = [
        f"demo organization {org.organization_id} (security account {org.security_account_id}, "
        f"region {org.region})",
        f"worker role: {org.worker_role_arn}",
    ]
    for account in org.accounts:
        lines.append(
            f"account {account.account_id} ({account.name}): execution role {account.execution_role_arn}"
        )
        lines.append(f"  vpcs: {', '.join(f'{kind} {vpc}' for kind, vpc in account.vpcs.items())}")
        for instance in account.instances:
            notes = []
            if instance.instance_profile_arn is None:
                notes.append("no profile")
            if instance.exempt:
                notes.append("exempt")
            lines.append(
                f"  {instance.label:<10} {instance.instance_id}  vpc {instance.vpc_id}  "
                f"enis {','.join(instance.eni_ids)}" + (f"  ({', '.join(notes)})" if notes else "")
            )
    target = org.instance("web-1")
    body = json.dumps(
        {
            "instance_id": target.instance_id,
            "account_id": target.account_id,
            "region": target.region,
            "reason": "demo",
        }
    )
    lines += [
        "",
        "isolate a demo instance:",
        f"  curl -s -X POST {api_url}/isolate -H 'x-api-key: {api_key}' "
        f"-H 'content-type: application/json' -d '{body}'",
        "then follow it (isolation_id from the answer):",
        f"  curl -s {api_url}/isolations/ISOLATION_ID -H 'x-api-key: {api_key}'",
        f"  curl -s '{api_url}/isolations?instance_id={target.instance_id}' -H 'x-api-key: {api_key}'",
        "or with the client (in another terminal, from this directory):",
        f"  export {client.API_ENV}={shlex.quote(api_url)} {client.KEY_ENV}={shlex.quote(api_key)}",
        f"  {command} isolate {target.instance_id} --account {target.account_id} --region {target.region}"
        " --reason demo --wait",
        f"  {command} list",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return 2
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if args.command in client.COMMANDS:
        return client.main(args)
    try:
        if args.command == "serve":
            return serve(args)
        from local_stack.demo import run_demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in LOCAL_EXTRA:
            raise
        print(
            f"ec2-isolation {args.command}: the local stack needs the project's `local` extra "
            f"(missing {exc.name}): in a clone, `make install`; or pip install '.[local]'",
            file=sys.stderr,
        )
        return 2
    return run_demo()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
