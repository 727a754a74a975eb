"""Evidence and labels: termination protection on, and the service's tags on the instance."""

from __future__ import annotations

from shared.models import TAG_PREFIX, StepRecord, iso8601, utcnow
from worker.steps.base import Step, StepContext

ID_TAG = f"{TAG_PREFIX}id"
AT_TAG = f"{TAG_PREFIX}at"
SOURCE_TAG = f"{TAG_PREFIX}source"


class EnableTerminationProtection(Step):
    """An isolated instance is evidence: nobody terminates it by accident (or on purpose) via the API."""

    name = "enable-termination-protection"
    permissions = ("ec2:DescribeInstanceAttribute", "ec2:ModifyInstanceAttribute")

    def run(self, ctx: StepContext) -> StepRecord:
        attribute = ctx.ec2.describe_instance_attribute(
            InstanceId=ctx.target.instance_id, Attribute="disableApiTermination"
        )
        if attribute.get("DisableApiTermination", {}).get("Value"):
            return StepRecord.already(self.name, "termination protection was on")
        ctx.ec2.modify_instance_attribute(
            InstanceId=ctx.target.instance_id, DisableApiTermination={"Value": True}
        )
        return StepRecord.done(self.name, "termination protection on")


class TagInstance(Step):
    """Tag the instance with the isolation that holds it. Every tag written starts with `ec2-isolation:`,
    which the tag trigger's rule never matches, so these tags cannot start another isolation."""

    name = "tag-instance"
    permissions = ("ec2:CreateTags",)

    def run(self, ctx: StepContext) -> StepRecord:
        if ctx.instance.tags.get(ID_TAG) == ctx.isolation_id:
            return StepRecord.already(self.name, f"tagged {ID_TAG}={ctx.isolation_id}")
        tags = {ID_TAG: ctx.isolation_id, AT_TAG: iso8601(utcnow()), SOURCE_TAG: ctx.source.value}
        ctx.ec2.create_tags(
            Resources=[ctx.target.instance_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
        )
        previous = ctx.instance.tags.get(ID_TAG)
        note = f" (was {previous})" if previous else ""
        return StepRecord.done(self.name, ", ".join(f"{k}={v}" for k, v in tags.items()) + note)
