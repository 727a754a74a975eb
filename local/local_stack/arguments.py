"""The `ec2-isolation` command line's arguments: the parser of every command, the client's and the local
stack's, shared by the command (`local_stack.cli`) and the demo (which runs the client's commands)."""

from __future__ import annotations

import argparse
import re

from local_stack import client


def _accounts(value: str) -> list[str]:
    accounts = [part.strip() for part in value.split(",") if part.strip()]
    for account in accounts:
        if not re.fullmatch(r"[0-9]{12}", account):
            raise argparse.ArgumentTypeError(f"{account!r} is not a 12-digit account id")
    return accounts


def _role_name(value: str) -> str:
    if not re.fullmatch(r"[\w+=,.@-]{1,64}", value, flags=re.ASCII):
        raise argparse.ArgumentTypeError(f"{value!r} is not an IAM role name")
    return value


def _endpoint(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="ec2-isolation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""\
ec2-isolation's command, in two roles:

  the responders' client of an ec2-isolation API, deployed (the stack's ApiUrl output) or local
  (`make run`): every command below but serve and demo; give --api URL and --api-key KEY
  (or {client.API_ENV} and {client.KEY_ENV});

  the local stack: the whole service on embedded AWS, no AWS account needed: serve (the API and
  the worker, what `make run` starts) and demo (the whole story in one command, `make demo`).""",
        epilog="`ec2-isolation COMMAND --help` for a command's options.",
    )
    commands = root.add_subparsers(
        dest="command", metavar="{serve,demo,isolate,status,list,watch,release,exempt,exemptions,unexempt}"
    )

    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API and run the worker against a local AWS endpoint",
        description="Create what template.yaml declares in an AWS endpoint (an embedded moto server unless "
        "--aws-endpoint is given), serve the HTTP API through the ingest handler and run the worker on the "
        "queue as Lambda's SQS event source mapping would.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address of the HTTP API (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=8080, help="port of the HTTP API (default 8080; 0: any free port)"
    )
    serve.add_argument(
        "--aws-endpoint",
        type=_endpoint,
        metavar="URL",
        help="an AWS-compatible endpoint to use (credentials from the environment) instead of embedded moto "
        "(whose STS refuses an AssumeRole AWS refuses; an endpoint given here answers for itself)",
    )
    serve.add_argument(
        "--api-key", metavar="KEY", help="the x-api-key to require (default: a random key, printed)"
    )
    serve.add_argument(
        "--target-role-name",
        type=_role_name,
        metavar="NAME",
        help="role the worker assumes in member accounts (default: template.yaml's TargetRoleName)",
    )
    serve.add_argument(
        "--allowed-accounts",
        type=_accounts,
        metavar="ID,ID",
        help="accounts that may be isolated (default: any)",
    )
    serve.add_argument(
        "--seed-demo", action="store_true", help="create a demo organization and print curl commands"
    )
    serve.add_argument(
        "--pollers",
        type=_positive,
        default=None,
        help="concurrent worker environments (processes) per queue (default: the event source's "
        "MaximumConcurrency in the template, WorkerMaxConcurrency)",
    )
    serve.add_argument("--template", metavar="PATH", help="template.yaml to read (default: the project's)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every request and batch")

    commands.add_parser(
        "demo",
        help="the whole story in one command: webhook, GuardDuty finding, tag event and Security Hub action "
        "isolate four instances",
    )
    client.add_commands(commands)
    return root
