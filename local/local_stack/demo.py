"""`ec2-isolation demo`: the whole story in one command, no input needed.

Embedded AWS, the demo organization, the API on a free loopback port; then four isolations, each of a
different demo instance and each started a different way:

- webhook: `POST /isolate` over HTTP to the local API, for the instance in an Auto Scaling group behind a
  classic load balancer and a target group;
- GuardDuty: a finding (severity 8, the documented event shape) put on the stack's default bus, where
  the delegated administrator receives its members' findings;
- tag: the instance tagged `isolate=true` in its account, and the `Tag Change on Resource` event put on
  the stack's bus as the member account's forwarding rule delivers it;
- Security Hub: an analyst's "Isolate instance" custom action on two findings (the instance, and an S3
  bucket that is ignored) put on the stack's default bus;
- tamper: once the GuardDuty isolation is in place, the member account's administrator puts one of the
  instance's interfaces back in its old groups, and the CloudTrail event of that call (AWS's shape, the
  call's fields) is put on the stack's bus: the tamper watch isolates it again.

It waits (bounded) for the outcomes, then releases the webhook's isolation (`POST
/isolations/{id}/release`: the instance goes back into its Auto Scaling group and load balancers), prints
a table of the five isolations and the release, and exits 0 only when all five are ISOLATED and the
release RELEASED, as the records say and as the member accounts show (`local_stack.isolation_check`:
isolated, and the released instance as it was before its isolation).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from local_stack import client
from local_stack.arguments import parser
from local_stack.isolation_check import isolation_problems, observed_state, release_problems
from local_stack.sample_events import (
    cloudtrail_call,
    groups_changed,
    guardduty_finding,
    security_hub_custom_action,
    tag_change,
)
from shared.models import seconds_between

#: Quiet handlers: the table is the output (the user's environment still wins).
DEMO_ENVIRONMENT = {"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true"}
WAIT_SECONDS = 45
ISOLATION_ENDED = ("ISOLATED", "FAILED", "SKIPPED")


def _steps(record: dict[str, Any]) -> str:
    return " ".join(f"{step['name']}:{step['status']}" for step in record.get("steps") or []) or "-"


def _release_row(record: dict[str, Any]) -> dict[str, Any]:
    """A released record as a row of the table: its release's steps; no time to containment."""
    release = record.get("release") or {}
    return record | {"contained_at": None, "steps": release.get("steps") or []}


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    header = ("source", "account", "instance", "status", "contained in", "steps")
    lines = []
    for source, record in rows:
        seconds = seconds_between(record.get("created_at"), record.get("contained_at"))
        lines.append(
            (
                source,
                str(record.get("account_id", "-")),
                str(record.get("instance_id", "-")),
                str(record.get("status", "-")),
                f"{seconds:.2f} s" if seconds is not None else "-",
                _steps(record),
            )
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header) - 1)]
    out = []
    for row in [header, *lines]:
        out.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    return "\n".join(out)


def run_demo() -> int:
    from local_stack.stack import LocalStack

    started = time.monotonic()
    environment = {name: value for name, value in DEMO_ENVIRONMENT.items() if name not in os.environ}
    print("starting the local stack: embedded AWS, demo organization, API and worker ...", flush=True)
    with LocalStack(seed_demo=True, environment=environment) as stack:
        demo = stack.demo
        assert demo is not None
        print(f"aws endpoint: {stack.aws_endpoint}")
        print(f"ready on {stack.api_url} ({time.monotonic() - started:.1f} s)", flush=True)

        by_webhook = demo.instance("web-asg", account=0)  # in an Auto Scaling group, behind load balancers
        by_finding = demo.instance("ipv6-1", account=0)
        by_tag = demo.instance("web-1", account=1)
        by_action = demo.instance("web-2", account=1)

        def clients(account_id: str) -> Any:
            return lambda service: stack.client(service, account_id)

        # The instance the demo releases at the end, as it is before its isolation.
        released_before = observed_state(clients(by_webhook.account_id), by_webhook.instance_id)

        status, body = stack.request(
            "POST",
            "/isolate",
            {
                "instance_id": by_webhook.instance_id,
                "account_id": by_webhook.account_id,
                "region": by_webhook.region,
                "reason": "demo: webhook",
                "requested_by": "ec2-isolation demo",
            },
        )
        print(f"webhook   POST /isolate {by_webhook.instance_id} -> {status} {body.get('status', body)}")

        finding = guardduty_finding(
            account_id=by_finding.account_id,
            region=by_finding.region,
            instance_id=by_finding.instance_id,
            severity=8,
            administrator_account=stack.account_id,
        )
        stack.put_event(finding)
        print(
            f"guardduty finding {finding['detail']['type']} (severity 8) for {by_finding.instance_id} -> bus"
        )

        stack.client("ec2", by_tag.account_id).create_tags(
            Resources=[by_tag.instance_id], Tags=[{"Key": "isolate", "Value": "true"}]
        )
        stack.put_event(
            tag_change(account_id=by_tag.account_id, region=by_tag.region, instance_id=by_tag.instance_id)
        )
        print(f"tag       isolate=true on {by_tag.instance_id} -> bus", flush=True)

        stack.put_event(
            security_hub_custom_action(
                action_account=stack.account_id,
                action_region=stack.region,
                resources=[
                    ("AwsEc2Instance", by_action.arn),
                    ("AwsS3Bucket", "arn:aws:s3:::demo-app-assets"),
                ],
            )
        )
        print(
            f"security hub custom action 'Isolate instance' on {by_action.instance_id} (and an S3 bucket) -> bus"
        )

        targets = [
            ("webhook", by_webhook),
            ("guardduty", by_finding),
            ("tag", by_tag),
            ("securityhub", by_action),
        ]
        deadline = time.monotonic() + WAIT_SECONDS
        results: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline and len(results) < len(targets):
            for source, instance in targets:
                if source in results:
                    continue
                items = stack.records(instance.instance_id, instance.account_id)
                if items and items[0]["status"] in ISOLATION_ENDED:
                    results[source] = items[0]
            time.sleep(0.25)
        if results.get("guardduty", {}).get("status") == "ISOLATED":
            results["tamper"] = _tamper_repair(stack, by_finding, deadline)
        targets.append(("tamper", by_finding))
        rows: list[tuple[str, dict[str, Any]]] = []
        for source, instance in targets:
            record = results.get(source)
            if record is None:
                items = stack.records(instance.instance_id, instance.account_id)
                record = (
                    items[0]
                    if items
                    else {
                        "account_id": instance.account_id,
                        "instance_id": instance.instance_id,
                        "status": "NO RECORD",
                    }
                )
            rows.append((source, record))
        # Isolated means the record says so and the member account shows it.
        problems = {
            source: isolation_problems(
                stack.client("ec2", instance.account_id),
                stack.client("iam", instance.account_id),
                instance.instance_id,
            )
            for source, instance in targets
        }
        isolated = all(record.get("status") == "ISOLATED" and not problems[source] for source, record in rows)

        # The webhook's isolation was a false positive: release it, and the instance is as it was.
        released = _release(stack, rows[0][1])
        release_differences = []
        if released.get("status") == "RELEASED":
            release_differences = release_problems(
                released_before, observed_state(clients(by_webhook.account_id), by_webhook.instance_id)
            )
        print()
        print(table([*rows, ("release", _release_row(released))]))
        for source, record in rows:
            if record.get("error"):
                print(f"{source}: {record['error'].get('code')}: {record['error'].get('message')}")
        for source, found in problems.items():
            for problem in found:
                print(f"{source}: {problem}")
        error = (released.get("release") or {}).get("error")
        if error:
            print(f"release: {error.get('code')}: {error.get('message')}")
        for difference in release_differences:
            print(f"release: not as before its isolation: {difference}")
        released_ok = released.get("status") == "RELEASED" and not release_differences
        if released_ok:
            print(f"release: {by_webhook.instance_id} is as it was before its isolation")
        _show_with_the_client(
            stack.api_url, stack.api_key, [record.get("isolation_id") for _, record in rows]
        )
        print()
        print(
            f"{'all five isolated' if isolated else 'NOT all isolated'}, "
            f"{'one released' if released_ok else 'the release did NOT end as it should'} "
            f"({time.monotonic() - started:.1f} s in all)",
            flush=True,
        )
    print()
    print(KEEP_GOING, flush=True)
    return 0 if isolated and released_ok else 1


def _release(stack: Any, record: dict[str, Any]) -> dict[str, Any]:
    """`POST /isolations/{id}/release` for an isolated record, and the record once the release ended
    (or as it is after WAIT_SECONDS)."""
    isolation_id = record.get("isolation_id")
    if record.get("status") != "ISOLATED" or not isolation_id:
        print(f"release   nothing to release: the webhook's isolation is {record.get('status')}")
        return record
    status, body = stack.request(
        "POST",
        f"/isolations/{isolation_id}/release",
        {"reason": "demo: a false positive", "requested_by": "ec2-isolation demo"},
    )
    print(
        f"release   POST /isolations/{isolation_id}/release -> {status} {body.get('status', body)}",
        flush=True,
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status, record = stack.request("GET", f"/isolations/{isolation_id}")
        if record.get("status") in client.RELEASE_ENDED or time.monotonic() > deadline:
            return dict(record)
        time.sleep(0.25)


def _tamper_repair(stack: Any, instance: Any, deadline: float) -> dict[str, Any]:
    """Someone undoes an isolation by hand; the CloudTrail call reaches the bus; the repair's record."""
    eni, groups = instance.eni_ids[0], instance.security_group_ids
    stack.client("ec2", instance.account_id).modify_network_interface_attribute(
        NetworkInterfaceId=eni, Groups=groups
    )
    stack.put_event(
        cloudtrail_call(
            source="aws.ec2",
            event_name="ModifyNetworkInterfaceAttribute",
            account_id=instance.account_id,
            region=instance.region,
            caller_role_arn=f"arn:aws:iam::{instance.account_id}:role/OrganizationAccountAccessRole",
            request_parameters=groups_changed(eni, groups),
            response_elements={"_return": True},
        )
    )
    print(
        f"tamper    {eni} of {instance.instance_id} put back in {', '.join(groups)} by hand -> CloudTrail -> bus"
    )
    while True:
        items = stack.records(instance.instance_id, instance.account_id)
        newest = items[0] if items else {}
        done = newest.get("source") == "tamper" and newest.get("status") in ("ISOLATED", "FAILED", "SKIPPED")
        if done or time.monotonic() >= deadline:
            return dict(newest)
        time.sleep(0.25)


def _show_with_the_client(api_url: str, api_key: str, isolation_ids: list[Any]) -> None:
    """The client commands that show the demo's isolations, run here against the demo's stack (its
    URL and key given as the environment would give them), with what they print."""
    commands = [["list"], *(["status", str(i)] for i in isolation_ids[:1] if i)]
    print()
    print("what the responders' client shows (run here, against the demo's own stack):")
    for command in commands:
        print()
        print("$ ec2-isolation " + " ".join(command))
        client.run(parser().parse_args([*command, "--api", api_url, "--api-key", api_key]))


#: How to go on once the demo's stack has stopped. `make install` puts the command in .venv/bin, which a
#: fresh shell does not have on its PATH: the commands name it there.
KEEP_GOING = f"""\
The demo's stack stops with it. To keep one up and try the client yourself, in this directory:
  make run                  (a demo organization like this one; it prints its ids, URL and API key; PORT=N
                            for another port than 8080)
then in another terminal, in this directory (or `source .venv/bin/activate` and drop the .venv/bin/):
  export {client.API_ENV}=http://127.0.0.1:8080 {client.KEY_ENV}=<the key it prints>
  .venv/bin/ec2-isolation list
  .venv/bin/ec2-isolation isolate INSTANCE_ID --account ACCOUNT_ID --region eu-west-1 --wait"""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
