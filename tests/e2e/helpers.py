"""Helpers of the end-to-end suite: the served stack in a subprocess, sample events, what isolated means."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_stack.demo_org import DemoOrg, find_demo
from local_stack.isolation_check import isolation_problems
from local_stack.organization import member_session
from local_stack.workloads import DemoInstance

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
# The console script the project installs, as a user runs it (the module when it is not installed).
_SCRIPT = Path(sys.executable).with_name("ec2-isolation")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "local_stack.cli"]

# The placeholders of tests/events/*.json (valid ids, so each file is a valid event as it is).
SAMPLE_ACCOUNT = "111122223333"
SAMPLE_REGION = "eu-west-1"
SAMPLE_INSTANCE = "i-0123456789abcdef0"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sample_event(name: str, instance: DemoInstance) -> dict[str, Any]:
    """A tests/events sample retargeted at a demo instance."""
    text = (EVENTS / name).read_text()
    text = text.replace(SAMPLE_INSTANCE, instance.instance_id)
    text = text.replace(SAMPLE_ACCOUNT, instance.account_id).replace(SAMPLE_REGION, instance.region)
    return json.loads(text)


def subprocess_environment(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "MOTO_")) and name not in ("TABLE_NAME", "QUEUE_URL")
    }
    env.update({"PYTHONUNBUFFERED": "1", "AWS_DEFAULT_REGION": SAMPLE_REGION}, **extra)
    return env


class Served:
    """`ec2-isolation serve` in a subprocess; its output is collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [*CLI, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or subprocess_environment(),
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"no {prefix!r} line within {timeout} s; output:\n" + "\n".join(self.lines[-60:])
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(timeout=5)
        return int(self.process.returncode)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "MOTO_ACCOUNT_ID"):
            patch.delenv(name, raising=False)
        for name, value in values.items():
            patch.setenv(name, value)
        yield


@dataclass
class ServedDemo:
    """`ec2-isolation serve --seed-demo` on a free loopback port, with its demo organization."""

    served: Served
    url: str
    key: str
    endpoint: str
    demo: DemoOrg


@contextlib.contextmanager
def serve_demo(startup_seconds: float = 240) -> Iterator[ServedDemo]:
    port = free_port()
    key = secrets.token_hex(16)
    served = Served("--host", "127.0.0.1", "--port", str(port), "--api-key", key, "--seed-demo")
    try:
        endpoint = served.wait_for_line("aws endpoint: ", startup_seconds).split()[2]
        served.wait_for_line("ready on ", startup_seconds)
        with demo_on(endpoint) as demo:
            yield ServedDemo(served, f"http://127.0.0.1:{port}", key, endpoint, demo)
    finally:
        served.stop(signal.SIGTERM)


@contextlib.contextmanager
def demo_on(endpoint: str) -> Iterator[DemoOrg]:
    """The demo organization a served stack seeded on `endpoint`, with this process's AWS clients
    pointed there for as long as the block runs."""
    with environment(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_REGION="eu-west-1",
    ):
        yield find_demo(region="eu-west-1", target_role_name="ec2-isolation-execution")


def put_event(event: dict[str, Any]) -> None:
    """On the stack account's default bus (inside `demo_on`), as AWS delivers a finding or a tag change
    there."""
    entry = {
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]),
        "Resources": list(event.get("resources") or []),
    }
    answer = boto3.client("events").put_events(Entries=[entry])
    assert not answer.get("FailedEntryCount"), answer


def member_clients(instance: DemoInstance) -> tuple[Any, Any]:
    """EC2 and IAM clients in the instance's account (moto lets the test assume any role)."""
    return _member_clients(os.environ.get("AWS_ENDPOINT_URL", ""), instance.account_id, instance.region)


@functools.lru_cache(maxsize=16)
def _member_clients(endpoint: str, account_id: str, region: str) -> tuple[Any, Any]:
    session = _member_session(endpoint, account_id, region)
    return session.client("ec2"), session.client("iam")


def instance_clients(instance: DemoInstance) -> Any:
    """`clients(service)`: a client of the instance's account and region (for `isolation_check`)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    return lambda service: _member_client(endpoint, instance.account_id, instance.region, service)


@functools.lru_cache(maxsize=64)
def _member_client(endpoint: str, account_id: str, region: str, service: str) -> Any:
    return _member_session(endpoint, account_id, region).client(service)  # type: ignore[call-overload]


def load_balanced(instance: DemoInstance) -> bool:
    """In an Auto Scaling group (not on its way out), or registered with a target group or classic load
    balancer of its account."""
    session = _member_session(os.environ.get("AWS_ENDPOINT_URL", ""), instance.account_id, instance.region)
    membership = session.client("autoscaling").describe_auto_scaling_instances(
        InstanceIds=[instance.instance_id]
    )
    if any(m["LifecycleState"] != "Detaching" for m in membership["AutoScalingInstances"]):
        return True
    elbv2 = session.client("elbv2")
    for group in elbv2.describe_target_groups()["TargetGroups"]:
        targets = elbv2.describe_target_health(TargetGroupArn=group["TargetGroupArn"])[
            "TargetHealthDescriptions"
        ]
        if any(t["Target"]["Id"] == instance.instance_id for t in targets):
            return True
    balancers = session.client("elb").describe_load_balancers()["LoadBalancerDescriptions"]
    return any(i["InstanceId"] == instance.instance_id for lb in balancers for i in lb["Instances"])


@functools.lru_cache(maxsize=16)
def _member_session(endpoint: str, account_id: str, region: str) -> boto3.Session:
    return member_session(account_id, region, base=boto3.Session(region_name=region))


DENY_POLICY = "ec2-isolation-deny-isolated-instances"


def assert_isolated(instance: DemoInstance, record: dict[str, Any], *, source: str) -> None:
    """What isolated means, observed in the member account, and the record that says so."""
    ec2, iam = member_clients(instance)
    assert record["status"] == "ISOLATED", record
    assert record["source"] == source
    assert record["contained_at"] is not None
    # Every step in place; a step that does not apply (no Auto Scaling group, no profile) says so: skipped
    assert record["steps"] and all(
        step["status"] in ("done", "already", "skipped") for step in record["steps"]
    ), record
    network = [s for s in record["steps"] if s["name"] in ("ensure-isolation-sg", "swap-security-groups")]
    assert network and all(step["status"] in ("done", "already") for step in network), record
    assert record["prior_state"]["vpc_id"] == instance.vpc_id
    assert sorted(eni["id"] for eni in record["prior_state"]["network_interfaces"]) == sorted(
        instance.eni_ids
    )
    assert isolation_problems(ec2, iam, instance.instance_id) == []

    # The one group is the VPC's isolation group, new to the instance; every interface is still there.
    interfaces = ec2.describe_network_interfaces(NetworkInterfaceIds=instance.eni_ids)["NetworkInterfaces"]
    assert len(interfaces) == len(instance.eni_ids) >= 2
    isolation_group = interfaces[0]["Groups"][0]["GroupId"]
    assert isolation_group not in instance.security_group_ids
    group = ec2.describe_security_groups(GroupIds=[isolation_group])["SecurityGroups"][0]
    assert group["VpcId"] == instance.vpc_id

    # The tags name this isolation.
    described = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0]
    tags = {tag["Key"]: tag["Value"] for tag in described.get("Tags", [])}
    assert tags["ec2-isolation:id"] == record["isolation_id"]
    assert tags["ec2-isolation:source"] == source
    datetime.fromisoformat(tags["ec2-isolation:at"].replace("Z", "+00:00"))

    # Its credentials denied on its prior role; its volumes' snapshots taken (nothing destroys it:
    # isolation_problems above).
    volumes = {m["Ebs"]["VolumeId"] for m in described["BlockDeviceMappings"]}
    assert {s["volume_id"] for s in record["evidence"]["snapshots"]} == volumes
    assert not load_balanced(instance)
    role_name = record["prior_state"].get("role_name")
    if role_name:
        document = iam.get_role_policy(RoleName=role_name, PolicyName=DENY_POLICY)["PolicyDocument"]
        assert instance.arn in document["Statement"][0]["Condition"]["ArnEquals"]["ec2:SourceInstanceARN"]
