"""Nothing destroys the instance, and it carries the isolation's labels; a release undoes both.

- Shutdown behaviour `stop`: with `terminate`, a `shutdown` inside the instance terminates it, whatever
  the termination protection says.
- `DeleteOnTermination` false on every attached EBS volume: if the instance goes anyway, its disks stay.
- Stop protection (`DisableApiStop`): a stop loses the memory.
- Termination protection (`DisableApiTermination`).
- `tag-instance`: the isolation's labels (`ec2-isolation:id`, `:at`, `:source`).
EC2 refuses termination and stop protection on Spot instances, and stop protection (and stopping) on
instance-store-backed ones: those are `skipped` with the reason. Each step reads the value it would change
ahead (`prior`): the follow-up writes them all into the prior state in one write before its first change.

The inverses, in a release: `restore-instance-attributes` sets shutdown behaviour, stop and termination
protection and `DeleteOnTermination` back as the record's prior state has them; `untag-instance` removes
the labels and adds `ec2-isolation:released-at`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shared.models import ISOLATION_ID_TAG, TAG_PREFIX, StepRecord, iso8601, utcnow
from worker.steps.base import Change, Plan, Step, StepContext

ID_TAG = ISOLATION_ID_TAG
AT_TAG = f"{TAG_PREFIX}at"
SOURCE_TAG = f"{TAG_PREFIX}source"
RELEASED_AT_TAG = f"{TAG_PREFIX}released-at"
_MODIFY = ("ec2:DescribeInstanceAttribute", "ec2:ModifyInstanceAttribute")
#: DescribeInstanceAttribute's name of the shutdown behaviour, and the key of its answer.
_SHUTDOWN = ("instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior")


def _attribute(ctx: StepContext, attribute: str, key: str) -> Any:
    described = ctx.ec2.describe_instance_attribute(InstanceId=ctx.target.instance_id, Attribute=attribute)
    return described.get(key, {}).get("Value")


def _refusal(ctx: StepContext, *, spot: bool, instance_store: bool) -> str | None:
    """Why EC2 refuses this protection for this instance, if it does."""
    if spot and ctx.instance.lifecycle == "spot":
        return "EC2 does not allow it on a Spot instance"
    if instance_store and ctx.instance.root_device_type == "instance-store":
        return "EC2 does not allow it on an instance-store-backed instance"
    return None


def _set_shutdown(ctx: StepContext, behaviour: str, what: str) -> Change:
    # The Attribute/Value form: moto 5.2.5 mistakes InstanceInitiatedShutdownBehavior={"Value": ...} for
    # a security-group change and empties the groups of a one-interface instance. AWS takes both.
    return Change(
        what,
        ctx.ec2.modify_instance_attribute,
        {"InstanceId": ctx.target.instance_id, "Attribute": _SHUTDOWN[0], "Value": behaviour},
    )


def _set_protection(ctx: StepContext, key: str, on: bool, what: str) -> Change:
    return Change(
        what, ctx.ec2.modify_instance_attribute, {"InstanceId": ctx.target.instance_id, key: {"Value": on}}
    )


class StopOnShutdown(Step):
    name = "stop-on-shutdown"
    permissions = _MODIFY

    def plan(self, ctx: StepContext) -> Plan:
        refused = _refusal(ctx, spot=False, instance_store=True)
        if refused:
            return Plan.nothing(StepRecord.skipped(self.name, f"shutdown behaviour stop: {refused}"))
        behaviour = _attribute(ctx, *_SHUTDOWN)
        if behaviour == "stop":
            return Plan.nothing(
                StepRecord.already(self.name, "shutdown behaviour was stop"), shutdown_behavior=behaviour
            )
        return Plan.making(
            f"shutdown behaviour stop (was {behaviour})",
            _set_shutdown(ctx, "stop", f"set shutdown behaviour stop (is {behaviour})"),
            shutdown_behavior=behaviour,
        )


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

    def plan(self, ctx: StepContext) -> Plan:
        refused = _refusal(ctx, spot=True, instance_store=self.refused_on_instance_store)
        if refused:
            return Plan.nothing(StepRecord.skipped(self.name, f"{self.what}: {refused}"))
        protected = bool(_attribute(ctx, self.attribute, self.key))
        prior: dict[str, Any] = {self.prior_field: protected}
        if protected:
            return Plan.nothing(StepRecord.already(self.name, f"{self.what} was on"), **prior)
        return Plan.making(
            f"{self.what} on", _set_protection(ctx, self.key, True, f"turn {self.what} on"), **prior
        )


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

    def plan(self, ctx: StepContext) -> Plan:
        tags = ctx.instance.tags
        if (
            tags.get(ID_TAG) == ctx.isolation_id
            and tags.get(SOURCE_TAG) == ctx.source.value
            and AT_TAG in tags
        ):
            return Plan.nothing(StepRecord.already(self.name, f"tagged {ID_TAG}={ctx.isolation_id}"))
        tags = {ID_TAG: ctx.isolation_id, AT_TAG: iso8601(utcnow()), SOURCE_TAG: ctx.source.value}
        previous = ctx.instance.tags.get(ID_TAG)
        note = f" (was {previous})" if previous else ""
        return Plan.making(
            ", ".join(f"{k}={v}" for k, v in tags.items()) + note,
            Change(
                f"tag {', '.join(tags)}",
                ctx.ec2.create_tags,
                {
                    "Resources": [ctx.target.instance_id],
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                },
            ),
        )


class RestoreInstanceAttributes(Step):
    """The inverse of the four steps above: each attribute as the record's prior state has it (an older
    record without a field leaves that attribute as it is)."""

    name = "restore-instance-attributes"
    permissions = _MODIFY

    def plan(self, ctx: StepContext) -> Plan:
        prior = ctx.prior
        changes: list[Change] = []
        done: list[str] = []
        already: list[str] = []
        if prior.shutdown_behavior is not None:
            behaviour = _attribute(ctx, *_SHUTDOWN)
            if behaviour == prior.shutdown_behavior:
                already.append(f"shutdown behaviour {behaviour}")
            else:
                done.append(f"shutdown behaviour {prior.shutdown_behavior}")
                changes.append(_set_shutdown(ctx, prior.shutdown_behavior, f"set {done[-1]}"))
        for value, protection in (
            (prior.stop_protection, EnableStopProtection),
            (prior.termination_protection, EnableTerminationProtection),
        ):
            if value is None:
                continue
            setting = f"{protection.what} {'on' if value else 'off'}"
            if bool(_attribute(ctx, protection.attribute, protection.key)) == value:
                already.append(setting)
                continue
            done.append(setting)
            changes.append(_set_protection(ctx, protection.key, value, f"turn {setting}"))
        if prior.volumes is not None:
            kept = {v.id: v.delete_on_termination for v in prior.volumes}
            changing = [
                v for v in ctx.instance.volumes if v.id in kept and kept[v.id] != v.delete_on_termination
            ]
            if changing:
                volumes = [f"DeleteOnTermination {kept[v.id]} on {v.id}" for v in changing]
                done.extend(volumes)
                changes.append(
                    Change(
                        f"set {', '.join(volumes)}",
                        ctx.ec2.modify_instance_attribute,
                        {
                            "InstanceId": ctx.target.instance_id,
                            "BlockDeviceMappings": [
                                {"DeviceName": v.device_name, "Ebs": {"DeleteOnTermination": kept[v.id]}}
                                for v in changing
                            ],
                        },
                    )
                )
            elif kept:
                already.append("DeleteOnTermination as before on every volume still attached")
        if changes:
            return Plan.making("; ".join(done), *changes, unchanged="; ".join(already))
        if already:
            return Plan.nothing(StepRecord.already(self.name, "; ".join(already)))
        return Plan.nothing(
            StepRecord.skipped(self.name, "the record holds no prior instance attributes (an older record)")
        )


class UntagInstance(Step):
    """The inverse of `TagInstance`: the isolation's labels removed, `ec2-isolation:released-at` added."""

    name = "untag-instance"
    permissions = ("ec2:DeleteTags", "ec2:CreateTags")

    def plan(self, ctx: StepContext) -> Plan:
        tags, instance_id = ctx.instance.tags, ctx.target.instance_id
        present = [k for k in (ID_TAG, AT_TAG, SOURCE_TAG) if k in tags]
        if not present and RELEASED_AT_TAG in tags:
            return Plan.nothing(StepRecord.already(self.name, f"{RELEASED_AT_TAG}={tags[RELEASED_AT_TAG]}"))
        released = iso8601(utcnow())
        removing = (
            Change(
                f"remove {', '.join(present)}",
                ctx.ec2.delete_tags,
                {"Resources": [instance_id], "Tags": [{"Key": k} for k in present]},
            ),
        )
        tagging = Change(
            f"tag {RELEASED_AT_TAG}",
            ctx.ec2.create_tags,
            {"Resources": [instance_id], "Tags": [{"Key": RELEASED_AT_TAG, "Value": released}]},
        )
        removed = f"removed {', '.join(present)}; " if present else ""
        return Plan.making(f"{removed}{RELEASED_AT_TAG}={released}", *(removing if present else ()), tagging)
