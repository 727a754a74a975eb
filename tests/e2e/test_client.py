"""The responders' client (`ec2-isolation isolate|status|list|watch|release`) against `serve`, as a person
runs it: every command, --json, and every error path with its exit status, the local stack's refusals
(as AWS's STS refuses) included."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local_stack.organization import member_session
from tests.e2e.helpers import CLI, ROOT, ServedDemo, free_port, serve_demo, subprocess_environment

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def served() -> Iterator[ServedDemo]:
    with serve_demo() as running:
        yield running


def client(served: ServedDemo | None, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = subprocess_environment()
    env.pop("EC2_ISOLATION_API", None)
    env.pop("EC2_ISOLATION_API_KEY", None)
    if served is not None:
        env.update({"EC2_ISOLATION_API": served.url, "EC2_ISOLATION_API_KEY": key or served.key})
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=90, env=env, cwd=ROOT, stdin=subprocess.DEVNULL
    )


def test_isolate_and_wait_shows_the_steps_and_exits_0(served: ServedDemo) -> None:
    instance = served.demo.instance("web-1")
    done = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                  "--region", instance.region, "--reason", "client test", "--wait")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("ensure-isolation-sg", "swap-security-groups", "tag-instance"):
        assert step in done.stdout
    assert f"ISOLATED {instance.instance_id}" in done.stdout


def test_status_list_and_watch_of_an_isolation(served: ServedDemo) -> None:
    instance = served.demo.instance("web-2")
    accepted = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                      "--region", instance.region, "--json")  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    isolation_id = json.loads(accepted.stdout)["isolation_id"]

    watched = client(served, "watch", isolation_id)
    assert watched.returncode == 0 and "swap-security-groups" in watched.stdout  # not a terminal: plain lines

    status = client(served, "status", isolation_id)
    assert status.returncode == 0 and "ISOLATED" in status.stdout and "steps:" in status.stdout
    record = json.loads(client(served, "status", isolation_id, "--json").stdout)
    assert record["isolation_id"] == isolation_id and record["status"] == "ISOLATED"

    listed = client(served, "list")
    assert listed.returncode == 0 and isolation_id in listed.stdout
    by_instance = json.loads(client(served, "list", "--instance", instance.instance_id, "--json").stdout)
    assert [r["isolation_id"] for r in by_instance["items"]] == [isolation_id]
    failed_only = json.loads(client(served, "list", "--status", "FAILED", "--json").stdout)
    assert all(r["status"] == "FAILED" for r in failed_only["items"])


def test_a_dry_run_checks_and_exits_0(served: ServedDemo) -> None:
    # Given the demo's instance in an Auto Scaling group behind load balancers
    instance = served.demo.instance("web-asg")
    # When a responder dry-runs its isolation and waits
    done = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                  "--region", instance.region, "--dry-run", "--wait", "--json")  # fmt: skip
    # Then it ends CHECKED (exit 0): EC2's steps would work, the others cannot be verified locally
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "CHECKED" and record["dry_run"] is True
    statuses = {step["name"]: step["status"] for step in record["steps"]}
    assert statuses["swap-security-groups"] == "would"
    assert statuses["leave-auto-scaling-and-load-balancers"] == "unverified"
    assert "does not implement iam:SimulatePrincipalPolicy" in record["steps"][2]["detail"]
    assert record["prior_state"]["autoscaling_group"] is not None


def test_release_and_wait_puts_the_instance_back_and_exits_0(served: ServedDemo) -> None:
    # Given an isolated instance
    instance = served.demo.instance("web-3")
    isolated = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                      "--region", instance.region, "--wait", "--json")  # fmt: skip
    assert isolated.returncode == 0, isolated.stdout + isolated.stderr
    isolation_id = json.loads(isolated.stdout)["isolation_id"]

    # When a responder releases it and waits
    done = client(served, "release", isolation_id, "--reason", "false positive", "--wait")

    # Then the release's steps are shown as they are recorded, and it exits 0, RELEASED
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{isolation_id} RELEASING" in done.stdout and "(release)" in done.stdout
    assert f"RELEASED {instance.instance_id} (released in" in done.stdout
    # And status shows the release part of the record
    status = client(served, "status", isolation_id)
    assert (
        status.returncode == 0
        and "release: requested" in status.stdout
        and "reason: false positive" in status.stdout
    )

    # When it is released a second time
    again = client(served, "release", isolation_id)

    # Then the API refuses, naming the status, and the client exits 2
    assert again.returncode == 2 and "409" in again.stderr and "RELEASED" in again.stderr, again.stderr


def test_an_isolation_that_fails_exits_1(served: ServedDemo) -> None:
    account = served.demo.accounts[0]
    done = client(served, "isolate", "i-0000000000000000f", "--account", account.account_id,
                  "--region", served.demo.region, "--wait")  # fmt: skip
    assert done.returncode == 1 and "InstanceNotFound" in done.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("status", "iso-00000000000000000000000000000000"), "isolation not found"),
        (("isolate", "i-0123456789abcdef0", "--account", "123", "--region", "eu-west-1"), "account_id"),
        (("isolate", "i-0123456789abcdef0", "--account", "111122223333", "--region", "eu-wset-1"), "region"),
        (("list", "--status", "ALMOST"), "status"),
    ],
)
def test_refused_requests_exit_2_naming_what_to_fix(
    served: ServedDemo, args: tuple[str, ...], says: str
) -> None:
    done = client(served, *args)
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_a_wrong_key_exits_2_and_says_so(served: ServedDemo) -> None:
    done = client(served, "list", key="not-the-key")
    assert done.returncode == 2 and "x-api-key is wrong" in done.stderr, done.stderr


def test_an_unreachable_api_exits_2(served: ServedDemo) -> None:
    done = client(None, "list", "--api", f"http://127.0.0.1:{free_port()}", "--api-key", "k")
    assert done.returncode == 2 and "cannot reach the API" in done.stderr


def test_usage_errors_exit_2() -> None:
    assert client(None, "list").returncode == 2  # no API given
    missing = client(None, "isolate", "i-0123456789abcdef0", "--api", "http://x", "--api-key", "k")
    assert missing.returncode == 2 and "--account" in missing.stderr


# --- the local stack refuses what AWS refuses -----------------------------------------------------------
# moto alone lets any caller assume any role: an account that never deployed the execution role, or
# expects another ExternalId, ends RoleNotAssumable as deployed; a dry run (moto has no policy simulator)
# prints no traceback.

NOT_ONBOARDED = "111122223333"


def test_an_account_without_the_execution_role_ends_role_not_assumable(served: ServedDemo) -> None:
    # When a responder isolates an instance of an account that never deployed iam-execution-role.yml
    done = client(served, "isolate", "i-0123456789abcdef0", "--account", NOT_ONBOARDED,
                  "--region", served.demo.region, "--wait")  # fmt: skip

    # Then STS refuses the worker, as in AWS, and the record ends FAILED RoleNotAssumable
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout and "RoleNotAssumable" in done.stdout, done.stdout
    assert "not authorized to perform: sts:AssumeRole on resource: " in done.stdout
    assert f"arn:aws:iam::{NOT_ONBOARDED}:role/ec2-isolation-execution" in done.stdout


def test_an_execution_role_expecting_another_external_id_refuses_the_worker(served: ServedDemo) -> None:
    # Given a member whose execution role expects an ExternalId the stack does not send
    instance = served.demo.instance("web-2", account=1)
    iam = member_session(instance.account_id, instance.region, base=boto3.Session()).client("iam")
    role = iam.get_role(RoleName="ec2-isolation-execution")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    original = json.dumps(trust)
    trust["Statement"][0]["Condition"] = {"StringEquals": {"sts:ExternalId": "the-member-expects-this"}}
    iam.update_assume_role_policy(RoleName="ec2-isolation-execution", PolicyDocument=json.dumps(trust))

    # When the instance is isolated
    try:
        done = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                      "--region", instance.region, "--wait")  # fmt: skip
    finally:
        iam.update_assume_role_policy(RoleName="ec2-isolation-execution", PolicyDocument=original)

    # Then the worker is refused, and nothing of the instance changed
    assert done.returncode == 1 and "RoleNotAssumable" in done.stdout, done.stdout + done.stderr
    listed = json.loads(client(served, "list", "--instance", instance.instance_id, "--json").stdout)
    record = listed["items"][0]
    assert record["status"] == "FAILED" and record["steps"] == [] and record["prior_state"] is None


def test_sts_refuses_with_aws_code_status_and_message(served: ServedDemo) -> None:
    # When a principal the execution role does not trust (the management account itself) assumes it
    account = served.demo.accounts[0]
    role_arn = f"arn:aws:iam::{account.account_id}:role/ec2-isolation-execution"
    with pytest.raises(ClientError) as refused:
        boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="not-the-worker")

    # Then STS answers as AWS does: 403 AccessDenied, naming the caller and the role
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "AccessDenied"
    assert error["Error"]["Message"] == (
        f"User: {boto3.client('sts').get_caller_identity()['Arn']} is not authorized to perform: "
        f"sts:AssumeRole on resource: {role_arn}"
    )
    # And the role Organizations created in the member account still lets its management account in
    assert member_session(account.account_id, served.demo.region).client("sts").get_caller_identity()


def test_a_dry_run_prints_one_line_and_no_traceback(served: ServedDemo) -> None:
    # When a dry run checks the IAM steps (moto has no iam:SimulatePrincipalPolicy), of an instance no
    # other test here isolates (of an isolated one, those steps are already in place: nothing to check)
    instance = served.demo.instance("ipv6-1")
    before = len(served.served.lines)
    done = client(served, "isolate", instance.instance_id, "--account", instance.account_id,
                  "--region", instance.region, "--dry-run", "--wait")  # fmt: skip

    # Then it ends CHECKED, those steps unverified, saying why
    assert done.returncode == 0 and "CHECKED" in done.stdout, done.stdout + done.stderr
    assert "unverified" in done.stdout and "SimulatePrincipalPolicy" in done.stdout
    # And the server's terminal says so in one line, with no traceback
    output = served.served.lines[before:]
    assert not any("Traceback" in line or "NotImplementedError" in line for line in output), "\n".join(output)
    said = [line for line in output if "does not implement iam:SimulatePrincipalPolicy" in line]
    assert len(said) == 1, "\n".join(output)


def test_exempt_exemptions_and_unexempt_through_serve(served: ServedDemo) -> None:
    from local_stack.sample_events import guardduty_finding
    from tests.e2e.helpers import put_event

    # Given a demo instance no one has isolated, and the demo's own exempt instance listed already
    instance = served.demo.instance("no-profile", account=1)
    seeded = served.demo.instance("exempt")
    assert seeded.instance_id in client(served, "exemptions").stdout

    # When a responder exempts it for a week
    done = client(served, "exempt", instance.instance_id, "--account", instance.account_id,
                  "--reason", "red-team exercise", "--until", "7d", "--json")  # fmt: skip

    # Then it exits 0 with the exemption, which the listing shows (and the account's listing)
    assert done.returncode == 0, done.stdout + done.stderr
    exemption = json.loads(done.stdout)
    assert exemption["instance_id"] == instance.instance_id and exemption["reason"] == "red-team exercise"
    listed = client(served, "exemptions", "--account", instance.account_id)
    assert listed.returncode == 0 and exemption["exemption_id"] in listed.stdout
    assert "red-team exercise" in listed.stdout

    # And a second exemption of the instance is refused naming the first (exit 2)
    again = client(served, "exempt", instance.instance_id, "--account", instance.account_id,
                   "--reason", "again", "--until", "1d")  # fmt: skip
    assert again.returncode == 2 and "409" in again.stderr and exemption["exemption_id"] in again.stderr

    # And a GuardDuty finding about it is SKIPPED, naming the exemption
    put_event(guardduty_finding(account_id=instance.account_id, region=instance.region,
                                instance_id=instance.instance_id))  # fmt: skip
    skipped = _latest(served, instance.instance_id)
    assert skipped["status"] == "SKIPPED" and exemption["exemption_id"] in skipped["steps"][0]["detail"]

    # When it is ended
    ended = client(served, "unexempt", exemption["exemption_id"])

    # Then it is no longer listed; ending an unknown one exits 2
    assert ended.returncode == 0 and "deleted" in ended.stdout
    assert exemption["exemption_id"] not in client(served, "exemptions").stdout
    unknown = client(served, "unexempt", "exm-00000000000000000000000000000000")
    assert unknown.returncode == 2 and "404" in unknown.stderr


def _latest(served: ServedDemo, instance_id: str) -> dict[str, Any]:
    """The instance's newest record once it has ended."""
    import time

    deadline = time.monotonic() + 60
    while True:
        listed = json.loads(client(served, "list", "--instance", instance_id, "--json").stdout)
        items = listed["items"]
        if items and items[0]["status"] not in ("QUEUED", "IN_PROGRESS") or time.monotonic() > deadline:
            assert items, f"no record of {instance_id}"
            return dict(items[0])
        time.sleep(0.3)


# --- the demo's closing commands ------------------------------------------------------------------------


def _fresh_shell(script: str) -> subprocess.CompletedProcess[str]:
    """`script` run by bash in this directory, as a person pastes it: a PATH with no ec2-isolation on it
    (a fresh login's; make install puts the command in .venv/bin), and no API in the environment."""
    env = subprocess_environment()
    env.pop("EC2_ISOLATION_API", None)
    env.pop("EC2_ISOLATION_API_KEY", None)
    env["PATH"] = os.pathsep.join(
        folder for folder in env.get("PATH", os.defpath).split(os.pathsep)
        if folder and not os.access(os.path.join(folder, "ec2-isolation"), os.X_OK)
    )  # fmt: skip
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=90, env=env,
                          cwd=ROOT, stdin=subprocess.DEVNULL)  # fmt: skip


def test_serves_banner_gives_client_commands_that_work_as_printed(served: ServedDemo) -> None:
    # Given what `serve --seed-demo` printed when it started: after the curl commands, the client's
    banner = served.served.lines[
        : next(i for i, line in enumerate(served.served.lines) if "ready on" in line)
    ]
    start = next(i for i, line in enumerate(banner) if line.startswith("or with the client"))
    commands = [line.strip() for line in banner[start + 1 :] if line.startswith("  ")]
    assert commands[0].startswith("export ") and any(" isolate " in line for line in commands), commands

    # When a person pastes them into another terminal
    done = _fresh_shell("\n".join(commands))

    # Then the demo instance is isolated (or already was: a webhook request isolates it again) and listed
    assert done.returncode == 0, done.stdout + done.stderr
    target = served.demo.instance("web-1")
    assert f"ISOLATED {target.instance_id}" in done.stdout, done.stdout


def test_the_demos_closing_commands_work_as_printed_in_a_fresh_shell(served: ServedDemo) -> None:
    from local_stack.demo import KEEP_GOING

    if not (ROOT / ".venv" / "bin" / "ec2-isolation").exists():
        pytest.skip("the commands name the .venv that `make install` creates; this checkout has none")
    # Given the commands `make demo` ends with, once `make run` is up (its URL and key put where the
    # text says), in a shell of this directory whose PATH is a fresh login's: no ec2-isolation on it
    assert "make run" in KEEP_GOING
    commands = [
        line.strip() for line in KEEP_GOING.splitlines() if line.startswith("  ") and "make run" not in line
    ]
    export = next(line for line in commands if line.startswith("export "))
    listing = next(line for line in commands if line.split()[1:2] == ["list"])
    assert "http://127.0.0.1:8080" in export and "<the key it prints>" in export, export
    export = export.replace("http://127.0.0.1:8080", served.url).replace("<the key it prints>", served.key)

    # When a person pastes them
    done = _fresh_shell(f"{export}\n{listing}")

    # Then the list answers from the running stack (its table, or that there is none yet)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[:2] in (["isolation", "status"], ["no", "isolation"]), done.stdout
