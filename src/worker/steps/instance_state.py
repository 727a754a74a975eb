"""Nothing destroys the instance, and it carries the isolation's labels.

- Shutdown behaviour `stop`: with `terminate`, a `shutdown` inside the instance terminates it, whatever
  the termination protection says.
- `DeleteOnTermination` false on every attached EBS volume: if the instance goes anyway, its disks stay.
- Stop protection (`DisableApiStop`): a stop loses the memory.
- Termination protection (`DisableApiTermination`).
EC2 refuses termination and stop protection on Spot instances, and stop protection (and stopping) on
instance-store-backed ones: those are `skipped` with the reason. Each step reads the value it would change
ahead (`prior`): the follow-up writes them all into the prior state in one write before its first change.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.models import ISOLATION_ID_TAG, TAG_PREFIX, StepRecord, iso8601, utcnow
from worker.steps.base import Change, Plan, Step, StepContext
from worker.steps.checks import PolicySimulator, ec2_dry_run, outcome

ID_TAG = ISOLATION_ID_TAG
AT_TAG = f"{TAG_PREFIX}at"
SOURCE_TAG = f"{TAG_PREFIX}source"
_MODIFY = ("ec2:DescribeInstanceAttribute", "ec2:ModifyInstanceAttribute")
#: DescribeInstanceAttribute's name of the shutdown behaviour, and the key of its answer.
_SHUTDOWN = ("instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior")


def _attribute(ctx: StepContext, attribute: str, key: str) -> Any:
    described = ctx.ec2.describe_instance_attribute(InstanceId=ctx.target.instance_id, Attribute=attribute)
    return described.get(key, {}).get("Value")


def _read_ahead(ctx: StepContext, attribute: str, key: str) -> Any:
    """`_attribute` read for the phase's prior state (`Step.prior`): the step's next run takes it."""
    ctx.read[attribute] = _attribute(ctx, attribute, key)
    return ctx.read[attribute]


def _current(ctx: StepContext, attribute: str, key: str) -> Any:
    """`_attribute` as read ahead for this run (taken: a later run reads it again), or read now."""
    if attribute in ctx.read:
        return ctx.read.pop(attribute)
    return _attribute(ctx, attribute, key)


def _refusal(ctx: StepContext, *, spot: bool, instance_store: bool) -> str | None:
    """Why EC2 refuses this protection for this instance, if it does."""
    if spot and ctx.instance.lifecycle == "spot":
        return "EC2 does not allow it on a Spot instance"
    if instance_store and ctx.instance.root_device_type == "instance-store":
        return "EC2 does not allow it on an instance-store-backed instance"
    return None


class StopOnShutdown(Step):
    name = "stop-on-shutdown"
    permissions = _MODIFY

    def prior(self, ctx: StepContext) -> dict[str, Any]:
        if _refusal(ctx, spot=False, instance_store=True):
            return {}
        return {"shutdown_behavior": _read_ahead(ctx, *_SHUTDOWN)}

    def _behaviour(self, ctx: StepContext) -> Any:
        return _current(ctx, *_SHUTDOWN)

    def run(self, ctx: StepContext) -> StepRecord:
        refused = _refusal(ctx, spot=False, instance_store=True)
        if refused:
            return StepRecord.skipped(self.name, f"shutdown behaviour stop: {refused}")
        behaviour = self._behaviour(ctx)
        ctx.remember(shutdown_behavior=behaviour)
        if behaviour == "stop":
            return StepRecord.already(self.name, "shutdown behaviour was stop")
        ctx.ec2.modify_instance_attribute(**self._change(ctx))
        return StepRecord.done(self.name, f"shutdown behaviour stop (was {behaviour})")

    def check(self, ctx: StepContext, simulator: PolicySimulator) -> StepRecord:
        refused = _refusal(ctx, spot=False, instance_store=True)
        if refused:
            return StepRecord.skipped(self.name, f"shutdown behaviour stop: {refused}")
        behaviour = self._behaviour(ctx)
        ctx.remember(shutdown_behavior=behaviour)
        if behaviour == "stop":
            return StepRecord.already(self.name, "shutdown behaviour was stop")
        what = f"set shutdown behaviour stop (is {behaviour})"
        return outcome(
            self.name, [ec2_dry_run(what, ctx.ec2.modify_instance_attribute, **self._change(ctx))], ""
        )

    def _change(self, ctx: StepContext) -> dict[str, Any]:
        # The Attribute/Value form: moto 5.2.5 mistakes InstanceInitiatedShutdownBehavior={"Value": ...} for
        # a security-group change and empties the groups of a one-interface instance. AWS takes both.
        return {
            "InstanceId": ctx.target.instance_id,
            "Attribute": "instanceInitiatedShutdownBehavior",
            "Value": "stop",
        }


class KeepVolumes(Step):
    name = "keep-volumes"
    permissions = ("ec2:ModifyInstanceAttribute",)

    def plan(self, ctx: StepContext) -> Plan:
        # (The volumes' prior values came with DescribeInstances, in the prior state written first.)
        volumes = ctx.instance.volumes
        if not volumes:
            return Plan.nothing(StepRecord.skipped(self.name, "no EBS volume attached"))
        deleting = [v for v in volumes if v.delete_on_termination]
        listed = ", ".join(v.id for v in deleting)
        if not deleting:
            return Plan.nothing(
                StepRecord.already(
                    self.name, f"DeleteOnTermination false on {', '.join(v.id for v in volumes)}"
                )
            )
        change = Change(
            f"set DeleteOnTermination false on {listed}",
            ctx.ec2.modify_instance_attribute,
            {
                "InstanceId": ctx.target.instance_id,
                "BlockDeviceMappings": [
                    {"DeviceName": v.device_name, "Ebs": {"DeleteOnTermination": False}} for v in deleting
                ],
            },
        )
        return Plan.making(f"DeleteOnTermination false on {listed}", change)


class _Protection(Step):
    """An instance attribute that, once on, refuses an API call (stop, terminate)."""

    permissions = _MODIFY
    #: DescribeInstanceAttribute's name, and the key of its answer and of ModifyInstanceAttribute.
    attribute: ClassVar[str]
    key: ClassVar[str]
    #: The prior-state field that keeps its value, and what to call it.
    prior_field: ClassVar[str]
    what: ClassVar[str]
    refused_on_instance_store: ClassVar[bool]

    def prior(self, ctx: StepContext) -> dict[str, Any]:
        if _refusal(ctx, spot=True, instance_store=self.refused_on_instance_store):
            return {}
        return {self.prior_field: bool(_read_ahead(ctx, self.attribute, self.key))}

    def _protected(self, ctx: StepContext) -> bool:
        return bool(_current(ctx, self.attribute, self.key))

    def run(self, ctx: StepContext) -> StepRecord:
        refused = _refusal(ctx, spot=True, instance_store=self.refused_on_instance_store)
        if refused:
            return StepRecord.skipped(self.name, f"{self.what}: {refused}")
        protected = self._protected(ctx)
        ctx.remember(**{self.prior_field: protected})
        if protected:
            return StepRecord.already(self.name, f"{self.what} was on")
        ctx.ec2.modify_instance_attribute(InstanceId=ctx.target.instance_id, **{self.key: {"Value": True}})
        return StepRecord.done(self.name, f"{self.what} on")

    def check(self, ctx: StepContext, simulator: PolicySimulator) -> StepRecord:
        refused = _refusal(ctx, spot=True, instance_store=self.refused_on_instance_store)
        if refused:
            return StepRecord.skipped(self.name, f"{self.what}: {refused}")
        protected = self._protected(ctx)
        ctx.remember(**{self.prior_field: protected})
        if protected:
            return StepRecord.already(self.name, f"{self.what} was on")
        checked = ec2_dry_run(
            f"turn {self.what} on",
            ctx.ec2.modify_instance_attribute,
            InstanceId=ctx.target.instance_id,
            **{self.key: {"Value": True}},
        )
        return outcome(self.name, [checked], "")


class EnableStopProtection(_Protection):
    """A stop loses the memory."""

    name = "enable-stop-protection"
    attribute, key, prior_field, what = (
        "disableApiStop",
        "DisableApiStop",
        "stop_protection",
        "stop protection",
    )
    refused_on_instance_store = True


class EnableTerminationProtection(_Protection):
    """An isolated instance is evidence: nobody terminates it by accident (or on purpose) via the API."""

    name = "enable-termination-protection"
    attribute, key = "disableApiTermination", "DisableApiTermination"
    prior_field, what = "termination_protection", "termination protection"
    refused_on_instance_store = False


class TagInstance(Step):
    """Tag the instance with the isolation that holds it. Every tag written starts with `ec2-isolation:`,
    which the tag trigger's rule never matches, so these tags cannot start another isolation. The tags
    are labels for people: the service never reads them back to decide anything, and tags the record
    does not back (anyone who can tag the instance can write them) are overwritten with its values."""

    name = "tag-instance"
    permissions = ("ec2:CreateTags",)

    def run(self, ctx: StepContext) -> StepRecord:
        tags = ctx.instance.tags
        if (
            tags.get(ID_TAG) == ctx.isolation_id
            and tags.get(SOURCE_TAG) == ctx.source.value
            and AT_TAG in tags
        ):
            return StepRecord.already(self.name, f"tagged {ID_TAG}={ctx.isolation_id}")
        tags = self._tags(ctx)
        ctx.ec2.create_tags(
            Resources=[ctx.target.instance_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
        )
        previous = ctx.instance.tags.get(ID_TAG)
        note = f" (was {previous})" if previous else ""
        return StepRecord.done(self.name, ", ".join(f"{k}={v}" for k, v in tags.items()) + note)

    def check(self, ctx: StepContext, simulator: PolicySimulator) -> StepRecord:
        tags = self._tags(ctx)
        checked = ec2_dry_run(
            f"tag {', '.join(tags)}",
            ctx.ec2.create_tags,
            Resources=[ctx.target.instance_id],
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )
        return outcome(self.name, [checked], "")

    def _tags(self, ctx: StepContext) -> dict[str, str]:
        return {ID_TAG: ctx.isolation_id, AT_TAG: iso8601(utcnow()), SOURCE_TAG: ctx.source.value}
