"""The responders' client: the same commands against a deployed API and against `make run`.

    ec2-isolation isolate INSTANCE_ID --account ID --region R [--reason ..] [--requested-by ..] [--dry-run]
                          [--wait]
    ec2-isolation status ISOLATION_ID
    ec2-isolation list [--instance ID [--account ID]] [--status S] [--limit N]
    ec2-isolation watch ISOLATION_ID
    ec2-isolation release ISOLATION_ID [--reason ..] [--requested-by ..] [--wait]
    ec2-isolation exempt INSTANCE_ID --account ID --reason .. --until DATE [--requested-by ..]
    ec2-isolation exemptions [--account ID]
    ec2-isolation unexempt EXEMPTION_ID

`--api URL` and `--api-key KEY`, or `EC2_ISOLATION_API` and `EC2_ISOLATION_API_KEY`. Tables for people,
`--json` for scripts. Exit status: 0 when the record ends as asked (ISOLATED, or CHECKED for a
`--dry-run`; RELEASED for `release`), 1 when it ends otherwise (FAILED, SKIPPED, RELEASE_FAILED), 2 for a usage error, a refused
request (wrong key, unknown id, a field the API names, a release the API's IAM authorization denies) or
an API that cannot be reached; `exempt`, `exemptions` and `unexempt` exit 0 when the API did as asked.
The standard library, and botocore's signer for a release and an exemption's change on a deployed API
(`local_stack.signing`): nothing of this goes into a Lambda package.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from shared.models import StepStatus, seconds_between

API_ENV = "EC2_ISOLATION_API"
KEY_ENV = "EC2_ISOLATION_API_KEY"
ENDED_AS_ASKED = frozenset({"ISOLATED", "CHECKED", "RELEASED"})
ENDED_OTHERWISE = frozenset({"FAILED", "SKIPPED", "RELEASE_FAILED"})
POLL_SECONDS = 1.0
RELEASED = frozenset({"RELEASED"})
#: A release that ended (RELEASING is still running).
RELEASE_ENDED = frozenset({"RELEASED", "RELEASE_FAILED"})
COMMANDS = ("isolate", "status", "list", "watch", "release", "exempt", "exemptions", "unexempt")


class ClientError(Exception):
    """Something a person can act on; the command exits 2."""


class Api:
    def __init__(self, url: str, key: str, *, timeout: float = 15) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, signed: bool = False
    ) -> Any:
        """One call; `signed`: a route a deployed API authorizes with IAM as well as the key (release),
        signed with SigV4 when the API is a deployed one (a local one checks the key only)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"x-api-key": self.key}
        if data is not None:
            headers["content-type"] = "application/json"
        if signed:
            headers = self._signed(method, self.url + path, data, headers)
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise ClientError(_refusal(error)) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise ClientError(f"cannot reach the API at {self.url}: {reason}") from error

    def _signed(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> dict[str, str]:
        from local_stack.signing import NoCredentials, deployed_region, sigv4_headers

        region = deployed_region(self.url)
        if region is None:
            return headers
        try:
            return sigv4_headers(method, url, data, headers, region=region)
        except NoCredentials as error:
            raise ClientError(str(error)) from error


def _refusal(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
    except ValueError:
        body = {}
    # API Gateway's own refusals (IAM authorization, resource policy) say `Message`, the service `message`.
    message = (body.get("message") or body.get("Message")) if isinstance(body, dict) else None
    errors = (body.get("errors") if isinstance(body, dict) else None) or []
    fields = [f"{e.get('field')}: {e.get('message') or e.get('type')}" for e in errors if isinstance(e, dict)]
    if error.code == 403 and not fields and message in (None, "Forbidden"):
        message = "the API key is missing or wrong"
    text = f"the API refused the request ({error.code}): {message or error.reason}"
    return text + "".join(f"\n  {field}" for field in fields)


# --- output -------------------------------------------------------------------------------------------


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


def _contained(record: dict[str, Any]) -> str:
    seconds = seconds_between(record.get("created_at"), record.get("contained_at"))
    return f"{seconds:.2f} s" if seconds is not None else "-"


def _how_long(record: dict[str, Any]) -> str:
    return "dry run: nothing changed" if record.get("dry_run") else f"contained in {_contained(record)}"


def _containment(record: dict[str, Any]) -> str:
    """The list's column: how long the containment took, or that a dry run contains nothing."""
    return "dry run" if record.get("dry_run") else _contained(record)


def _when_contained(record: dict[str, Any]) -> str:
    if record.get("dry_run"):
        return _how_long(record)
    return f"contained {record.get('contained_at') or '-'} ({_contained(record)})"


def _records_table(records: list[dict[str, Any]]) -> str:
    header = ("isolation", "status", "source", "account", "region", "instance", "contained in", "created")
    rows = [
        (
            r["isolation_id"],
            r["status"],
            r["source"],
            r["account_id"],
            r["region"],
            r["instance_id"],
            _containment(r),
            r["created_at"],
        )
        for r in records
    ]
    return _table(header, rows) if rows else "no isolation"


#: Every step outcome in one column width (`unverified` is the longest).
_STATUS_WIDTH = max(len(status) for status in StepStatus)


def _step_line(step: dict[str, Any]) -> str:
    return f"{step['at']}  {step['status']:<{_STATUS_WIDTH}} {step['name']}: {step['detail']}"


def _steps_text(steps: list[dict[str, Any]], *, ended: bool, indent: str = "") -> list[str]:
    """The steps, one line each; when there are none, whether any may still come."""
    if steps:
        return [f"{indent}steps:", *(f"{indent}  {_step_line(step)}" for step in steps)]
    return [f"{indent}steps: none" if ended else f"{indent}steps: none yet"]


def _release_steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    return list((record.get("release") or {}).get("steps") or [])


def _timeline(record: dict[str, Any]) -> list[str]:
    """Every step of the record, the isolation's then the release's, one line each."""
    lines = [_step_line(step) for step in record.get("steps") or []]
    return lines + [f"{_step_line(step)}  (release)" for step in _release_steps(record)]


def _released(record: dict[str, Any]) -> str:
    release = record.get("release") or {}
    seconds = seconds_between(release.get("requested_at"), record.get("released_at"))
    return f"{seconds:.2f} s" if seconds is not None else "-"


def _release_text(record: dict[str, Any]) -> list[str]:
    release = record.get("release")
    if record.get("released_by"):
        return [f"released {record.get('released_at') or '-'} with its episode, by {record['released_by']}"]
    if not release:
        return []
    lines = [
        f"release: requested {release.get('requested_at')} by {release.get('requested_by') or '-'}"
        f", released {record.get('released_at') or '-'} ({_released(record)})",
    ]
    if release.get("reason"):
        lines.append(f"  reason: {release['reason']}")
    if release.get("error"):
        lines.append(f"  error: {release['error']['code']}: {release['error']['message']}")
    ended = record["status"] in RELEASE_ENDED
    return lines + _steps_text(_release_steps(record), ended=ended, indent="  ")


def _record_text(record: dict[str, Any]) -> str:
    lines = [
        f"{record['isolation_id']}  {record['status']}{'  (dry run)' if record.get('dry_run') else ''}",
        f"instance {record['instance_id']} in {record['account_id']} {record['region']}, by {record['source']}"
        f", attempts {record['attempts']}",
        f"created {record['created_at']}, {_when_contained(record)}",
    ]
    if record.get("reason"):
        lines.append(f"reason: {record['reason']}")
    if record.get("error"):
        lines.append(f"error: {record['error']['code']}: {record['error']['message']}")
    ended = record["status"] in ENDED_AS_ASKED | ENDED_OTHERWISE
    lines += _steps_text(list(record.get("steps") or []), ended=ended)
    return "\n".join(lines + _release_text(record))


def _exit_status(record: dict[str, Any], asked: frozenset[str] = ENDED_AS_ASKED) -> int:
    """0 when the record ended as asked (or has not ended: status), 1 when it ended otherwise."""
    ended = record["status"] in ENDED_AS_ASKED | ENDED_OTHERWISE
    return 1 if ended and record["status"] not in asked else 0


def _ended_line(record: dict[str, Any]) -> str:
    if record.get("release"):
        line = f"{record['status']} {record['instance_id']} (released in {_released(record)})"
        error = record["release"].get("error")
    else:
        line = f"{record['status']} {record['instance_id']} ({_how_long(record)})"
        error = record.get("error")
    return line + (f"\nerror: {error['code']}: {error['message']}" if error else "")


# --- commands -----------------------------------------------------------------------------------------


def watch(
    api: Api,
    isolation_id: str,
    *,
    out: TextIO,
    as_json: bool,
    asked: frozenset[str] = ENDED_AS_ASKED,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Follow the record until it ends: a line per step as it is recorded, the release's after the
    isolation's (and a spinner on a terminal). `asked`: the statuses that exit 0."""
    shown = 0
    spinner = itertools.cycle("|/-\\")
    live = out.isatty() and not as_json
    while True:
        record = api.call("GET", f"/isolations/{urllib.parse.quote(isolation_id)}")
        lines = _timeline(record)
        if live:
            out.write("\r\033[K")
        if not as_json:
            for line in lines[shown:]:
                out.write(line + "\n")
        shown = len(lines)
        if record["status"] in ENDED_AS_ASKED | ENDED_OTHERWISE:
            out.write(json.dumps(record, indent=2) + "\n" if as_json else _ended_line(record) + "\n")
            out.flush()
            return _exit_status(record, asked)
        if live:
            out.write(f"{next(spinner)} {record['status']} ...")
        out.flush()
        sleep(POLL_SECONDS)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    api = Api(args.api, args.api_key)
    if args.command == "isolate":
        body = {"instance_id": args.instance_id, "account_id": args.account, "region": args.region}
        if args.reason:
            body["reason"] = args.reason
        if args.requested_by:
            body["requested_by"] = args.requested_by
        if args.dry_run:
            body["dry_run"] = True
        accepted = api.call("POST", "/isolate", body)
        if not args.wait:
            out.write(json.dumps(accepted, indent=2) + "\n" if args.json else _accepted_text(accepted) + "\n")
            return 0
        if not args.json:
            out.write(_accepted_text(accepted) + "\n")
        return watch(api, accepted["isolation_id"], out=out, as_json=args.json)
    if args.command == "status":
        record = api.call("GET", f"/isolations/{urllib.parse.quote(args.isolation_id)}")
        out.write(json.dumps(record, indent=2) + "\n" if args.json else _record_text(record) + "\n")
        return _exit_status(record)
    if args.command == "watch":
        return watch(api, args.isolation_id, out=out, as_json=args.json)
    if args.command == "release":
        return release(api, args, out)
    if args.command in ("exempt", "exemptions", "unexempt"):
        return exemptions(api, args, out)
    query = {
        "instance_id": args.instance,
        "account_id": args.account,
        "status": args.status,
        "limit": args.limit,
    }
    page = api.call("GET", "/isolations?" + urllib.parse.urlencode({k: v for k, v in query.items() if v}))
    if args.json:
        out.write(json.dumps(page, indent=2) + "\n")
    else:
        out.write(_records_table(page["items"]) + "\n")
        if page.get("next"):
            out.write("(more: narrow with --status, or raise --limit)\n")
    return 0


def release(api: Api, args: argparse.Namespace, out: TextIO) -> int:
    """Undo an isolation from its recorded prior state; signed with SigV4 on a deployed API."""
    body = {
        name: value for name, value in (("reason", args.reason), ("requested_by", args.requested_by)) if value
    }
    path = f"/isolations/{urllib.parse.quote(args.isolation_id, safe='')}/release"
    accepted = api.call("POST", path, body, signed=True)
    if not args.wait:
        out.write(json.dumps(accepted, indent=2) + "\n" if args.json else _accepted_text(accepted) + "\n")
        return 0
    if not args.json:
        out.write(_accepted_text(accepted) + "\n")
    return watch(api, accepted["isolation_id"], out=out, as_json=args.json, asked=RELEASED)


def exemptions(api: Api, args: argparse.Namespace, out: TextIO) -> int:
    """Exempt an instance from trigger-started isolations, list the active exemptions, or end one;
    the changes signed with SigV4 on a deployed API."""
    if args.command == "exempt":
        body = {
            "account_id": args.account,
            "instance_id": args.instance_id,
            "reason": args.reason,
            "expires_at": args.until,
        }
        if args.requested_by:
            body["requested_by"] = args.requested_by
        created = api.call("POST", "/exemptions", body, signed=True)
        out.write(json.dumps(created, indent=2) + "\n" if args.json else _exemption_text(created) + "\n")
        return 0
    if args.command == "unexempt":
        api.call("DELETE", f"/exemptions/{urllib.parse.quote(args.exemption_id, safe='')}", signed=True)
        deleted = {"exemption_id": args.exemption_id, "deleted": True}
        text = f"{args.exemption_id} deleted: triggers isolate its instance again"
        out.write(json.dumps(deleted, indent=2) + "\n" if args.json else text + "\n")
        return 0
    query = "?" + urllib.parse.urlencode({"account_id": args.account}) if args.account else ""
    listed = api.call("GET", "/exemptions" + query)
    if args.json:
        out.write(json.dumps(listed, indent=2) + "\n")
    else:
        out.write(_exemptions_table(listed["items"]) + "\n")
    return 0


def _exemption_text(exemption: dict[str, Any]) -> str:
    lines = [
        f"{exemption['exemption_id']}: triggers leave {exemption['instance_id']} in {exemption['account_id']} "
        f"alone until {exemption['expires_at']}",
        f"reason: {exemption['reason']}",
    ]
    if exemption.get("requested_by"):
        lines.append(f"requested by: {exemption['requested_by']}")
    return "\n".join(lines)


def _exemptions_table(items: list[dict[str, Any]]) -> str:
    header = ("exemption", "account", "instance", "until", "requested by", "reason")
    rows = [
        (
            e["exemption_id"],
            e["account_id"],
            e["instance_id"],
            e["expires_at"],
            e.get("requested_by") or "-",
            e["reason"],
        )
        for e in items
    ]
    return _table(header, rows) if rows else "no active exemption"


_DURATION = re.compile(r"^([0-9]{1,4})([dh])$")


def until(value: str, *, now: datetime | None = None) -> str:
    """`--until`: an ISO-8601 UTC time, a date (00:00 UTC that day), or a duration from now (`7d`,
    `12h`); as the API takes it (ISO-8601 UTC). The API checks it is ahead, and not too far."""
    moment = now or datetime.now(UTC)
    duration = _DURATION.fullmatch(value.strip())
    if duration:
        amount, unit = int(duration.group(1)), duration.group(2)
        ends = moment + (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
        return ends.strftime("%Y-%m-%dT%H:%M:%SZ")
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value.strip()):
        try:
            datetime.strptime(value.strip(), "%Y-%m-%d")
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{value!r} is not a date") from error
        return f"{value.strip()}T00:00:00Z"
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|\+00:00)", value.strip()):
        return value.strip()
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a time: give an ISO-8601 UTC time (2026-01-31T18:00:00Z), a date (2026-01-31, "
        "from 00:00 UTC) or a duration from now (7d, 12h)"
    )


def _accepted_text(accepted: dict[str, Any]) -> str:
    joined = " (joined the isolation already in flight)" if accepted.get("deduplicated") else ""
    return f"{accepted['isolation_id']} {accepted['status']}{joined}"


# --- arguments ----------------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """The client's subcommands, on the console script's parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api", default=os.environ.get(API_ENV), metavar="URL", help=f"the API's URL (or {API_ENV})"
    )
    common.add_argument(
        "--api-key", default=os.environ.get(KEY_ENV), metavar="KEY", help=f"the API key (or {KEY_ENV})"
    )
    common.add_argument("--json", action="store_true", help="JSON for scripts instead of tables")

    isolate = commands.add_parser("isolate", parents=[common], help="isolate an instance")
    isolate.add_argument("instance_id", metavar="INSTANCE_ID")
    isolate.add_argument("--account", required=True, metavar="ID", help="the instance's 12-digit account")
    isolate.add_argument("--region", required=True, metavar="R", help="the instance's region")
    isolate.add_argument("--reason", help="why (kept in the record)")
    isolate.add_argument("--requested-by", metavar="WHO", help="who asks (kept in the record)")
    isolate.add_argument(
        "--dry-run", action="store_true", help="check every step and its permissions, change nothing"
    )
    isolate.add_argument("--wait", action="store_true", help="follow it until it ends (as watch does)")

    status = commands.add_parser("status", parents=[common], help="one isolation's record and steps")
    status.add_argument("isolation_id", metavar="ISOLATION_ID")

    listing = commands.add_parser("list", parents=[common], help="isolations, newest first")
    listing.add_argument("--instance", metavar="ID", help="only this instance's")
    listing.add_argument("--account", metavar="ID", help="with --instance: only in this account")
    listing.add_argument("--status", help="without --instance: only this status")
    listing.add_argument("--limit", type=int, help="without --instance: at most this many (1 to 100)")

    watching = commands.add_parser(
        "watch", parents=[common], help="follow an isolation's steps until it ends"
    )
    watching.add_argument("isolation_id", metavar="ISOLATION_ID")

    releasing = commands.add_parser(
        "release",
        parents=[common],
        help="undo an isolation from its recorded prior state (SigV4-signed on a deployed API)",
        description="Release the instance of an isolation (its episode's latest record): its prior "
        "profile, credentials, security groups, load balancers, Auto Scaling group, attributes and tags "
        "come back. On a deployed API the request is signed with your AWS credentials (SigV4) as well "
        "as sent with the key; the local stack checks the key only.",
    )
    releasing.add_argument("isolation_id", metavar="ISOLATION_ID")
    releasing.add_argument("--reason", help="why (kept in the record's release)")
    releasing.add_argument(
        "--requested-by", metavar="WHO", help="who asks (a deployed API records your IAM identity instead)"
    )
    releasing.add_argument("--wait", action="store_true", help="follow it until it ends (as watch does)")
    _add_exemption_commands(commands, common)


def _add_exemption_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    exempting = commands.add_parser(
        "exempt",
        parents=[common],
        help="exempt an instance from trigger-started isolations until a time (SigV4-signed on a deployed API)",
        description="GuardDuty findings, isolate=true tags and Security Hub actions leave the instance alone "
        "until the exemption ends (their records end SKIPPED, naming it); a person's isolate still isolates "
        "it. One active exemption per instance. On a deployed API the request is signed with your AWS "
        "credentials (SigV4) as well as sent with the key; the local stack checks the key only.",
    )
    exempting.add_argument("instance_id", metavar="INSTANCE_ID")
    exempting.add_argument("--account", required=True, metavar="ID", help="the instance's 12-digit account")
    exempting.add_argument("--reason", required=True, help="why (quoted by every record it skips)")
    exempting.add_argument(
        "--until",
        required=True,
        type=until,
        metavar="DATE",
        help="when it ends: an ISO-8601 UTC time, a date (00:00 UTC) or a duration (7d, 12h); at most 90 days",
    )
    exempting.add_argument(
        "--requested-by", metavar="WHO", help="who asks (a deployed API records your IAM identity instead)"
    )

    listing = commands.add_parser("exemptions", parents=[common], help="the active exemptions")
    listing.add_argument("--account", metavar="ID", help="only this account's")

    unexempting = commands.add_parser(
        "unexempt",
        parents=[common],
        help="end an exemption now (SigV4-signed on a deployed API); it is kept, with who ended it",
    )
    unexempting.add_argument("exemption_id", metavar="EXEMPTION_ID")


def main(args: argparse.Namespace) -> int:
    if not args.api or not args.api_key:
        print(
            f"ec2-isolation {args.command}: give --api and --api-key (or {API_ENV}, {KEY_ENV})",
            file=sys.stderr,
        )
        return 2
    if not args.api.lower().startswith(("http://", "https://")):
        print(
            f"ec2-isolation {args.command}: the API's URL needs http:// or https:// "
            f"(got {args.api!r}: for example http://{args.api} for `make run`, or the deployed stack's "
            "https:// URL)",
            file=sys.stderr,
        )
        return 2
    try:
        return run(args)
    except ClientError as error:
        print(f"ec2-isolation {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
