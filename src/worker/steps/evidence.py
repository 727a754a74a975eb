"""Evidence: once per episode, one crash-consistent snapshot of every attached EBS volume (one
CreateSnapshots call), tagged on creation, so that a later termination (by anyone) does not take the
disks with it. The step does not wait for the snapshots to complete.

- Tags on creation only (the member role may tag snapshots only with `ec2:CreateAction` =
  `CreateSnapshots`): `ec2-isolation:id`, `ec2-isolation:instance-id`, `ec2-isolation:at`.
- A retry finds the snapshots its isolation took before a crash by their `ec2-isolation:id` tag, but
  trusts only what the record says could be its own: the record notes when an attempt asked for them
  (before CreateSnapshots), and only snapshots of the instance's attached volumes, owned by the account
  and started since then, count (one per volume, the first). Anyone who can create a snapshot in the
  account can tag one with the isolation's id: without that note, none is looked for. A later isolation
  of the episode has them in its `evidence` already: no second snapshot.
- Optionally locked in governance mode for `SNAPSHOT_LOCK_DAYS`, so that someone in the account cannot
  delete the evidence.
- A tamper repair checks that the episode's snapshots still exist: when one was deleted, it takes the
  instance's snapshots again (its own, tagged with its id).
- `ConcurrentSnapshotLimitExceeded` (and throttling) is retried through the queue like any transient error.

No inverse: a release keeps the snapshots (and their lock).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.models import (
    ISOLATION_ID_TAG,
    TAG_PREFIX,
    Evidence,
    Snapshot,
    Source,
    StepRecord,
    iso8601,
    utcnow,
)
from worker.steps.base import Change, Plan, Step, StepContext
from worker.steps.checks import Action

INSTANCE_TAG = f"{TAG_PREFIX}instance-id"
#: How far EC2's clock may be behind the worker's when it starts a snapshot the worker asked for.
CLOCK_SKEW = timedelta(seconds=5)
AT_TAG = f"{TAG_PREFIX}at"


class SnapshotVolumes(Step):
    name = "snapshot-volumes"
    #: Granted only with the member template's SnapshotVolumes on (and tags only on creation).
    write_permissions = ("ec2:CreateSnapshots",)
    #: Granted only with the member template's SnapshotLockDays above 0.
    lock_permissions = ("ec2:LockSnapshot",)
    permissions = ("ec2:DescribeSnapshots", "ec2:CreateTags", *write_permissions, *lock_permissions)

    def plan(self, ctx: StepContext) -> Plan:
        deleted = self._deleted(ctx) if ctx.source is Source.TAMPER else []
        if ctx.evidence is not None and ctx.evidence.snapshots and not deleted:
            return Plan.nothing(
                StepRecord.already(self.name, _listed(ctx.evidence, "the episode's snapshots"))
            )
        if not ctx.settings.SNAPSHOT_VOLUMES:
            return Plan(
                settled=StepRecord.skipped(self.name, "snapshots are off (SnapshotVolumes=false)"),
                evidence=Evidence() if ctx.evidence is None else None,
            )
        if not ctx.instance.volumes:
            return Plan(settled=StepRecord.skipped(self.name, "no EBS volume attached"), evidence=Evidence())
        taken = self._taken(ctx)  # (nothing to look for in a dry run: it never asks for snapshots)
        if taken.snapshots:
            return Plan(
                changes=self._locks(ctx, taken),
                done=_listed(taken, "found the snapshots an earlier attempt took"),
                evidence=taken,
            )
        days = ctx.settings.SNAPSHOT_LOCK_DAYS
        # LockSnapshot names a snapshot that a dry run never takes: simulated.
        snapshots = f"arn:{ctx.partition}:ec2:{ctx.target.region}::snapshot/*"
        locking = (Action("ec2:LockSnapshot", [snapshots], f"lock them for {days} day(s)"),) if days else ()
        creation = self._creation(ctx)
        if not ctx.dry_run:
            # When the snapshots are asked for rides with the phase's plans, on record before the ask.
            ctx.notes.will_ask_snapshots(iso8601(utcnow()))
        volumes = ", ".join(v.id for v in ctx.instance.volumes)
        what = f"{', '.join(deleted)} deleted: snapshots again" if deleted else "crash-consistent snapshots"
        return Plan(
            changes=(
                Change(
                    f"snapshot {volumes}",
                    ctx.ec2.create_snapshots,
                    creation,
                    also=locking,
                    apply_by=lambda: self._take(ctx, creation),
                ),
            ),
            done=lambda results: _listed(results[0], what),
            evidence=lambda results: results[0],
        )

    def _take(self, ctx: StepContext, creation: dict[str, Any]) -> Evidence:
        """The snapshots, asked for once the record says so (a retry after a crash looks for them), and
        locked."""
        asked = iso8601(utcnow())
        ctx.notes.asking_snapshots(asked)
        ctx.snapshots_asked_at = ctx.snapshots_asked_at or asked
        created = ctx.ec2.create_snapshots(**creation)["Snapshots"]
        evidence = Evidence(
            snapshots=[Snapshot(volume_id=s["VolumeId"], snapshot_id=s["SnapshotId"]) for s in created]
        )
        for lock in self._locks(ctx, evidence):
            lock.apply()
        return evidence

    def _creation(self, ctx: StepContext) -> dict[str, Any]:
        """CreateSnapshots' parameters: every volume, crash-consistent, tagged on creation."""
        return {
            "InstanceSpecification": {"InstanceId": ctx.target.instance_id, "ExcludeBootVolume": False},
            "Description": f"ec2-isolation {ctx.isolation_id}: evidence of {ctx.target.instance_id}",
            "TagSpecifications": [
                {
                    "ResourceType": "snapshot",
                    "Tags": [
                        {"Key": ISOLATION_ID_TAG, "Value": ctx.isolation_id},
                        {"Key": INSTANCE_TAG, "Value": ctx.target.instance_id},
                        {"Key": AT_TAG, "Value": iso8601(utcnow())},
                    ],
                }
            ],
        }

    def _deleted(self, ctx: StepContext) -> list[str]:
        """The episode's snapshots that no longer exist."""
        listed = [s.snapshot_id for s in ctx.evidence.snapshots] if ctx.evidence else []
        if not listed:
            return []
        found = ctx.ec2.describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": "snapshot-id", "Values": listed}]
        )["Snapshots"]
        present = {s["SnapshotId"] for s in found}
        return [snapshot for snapshot in listed if snapshot not in present]

    def _taken(self, ctx: StepContext) -> Evidence:
        """Snapshots this isolation took in an attempt that did not get to record them: only when the
        record says an attempt asked for them, and only those that can be its own (tagged with its id,
        of an attached volume of the instance, started since the ask: the first of each volume)."""
        if ctx.snapshots_asked_at is None:
            return Evidence()
        since = datetime.fromisoformat(ctx.snapshots_asked_at.replace("Z", "+00:00")) - CLOCK_SKEW
        volumes = {volume.id for volume in ctx.instance.volumes}
        first: dict[str, dict[str, Any]] = {}
        paginator = ctx.ec2.get_paginator("describe_snapshots")
        for page in paginator.paginate(
            OwnerIds=["self"], Filters=[{"Name": f"tag:{ISOLATION_ID_TAG}", "Values": [ctx.isolation_id]}]
        ):
            for snapshot in page["Snapshots"]:
                volume, started = snapshot.get("VolumeId"), snapshot.get("StartTime")
                if volume not in volumes or started is None or started < since:
                    continue
                if snapshot.get("OwnerId") not in (None, ctx.target.account_id):
                    continue
                if volume not in first or started < first[volume]["StartTime"]:
                    first[volume] = snapshot
        found = [Snapshot(volume_id=v, snapshot_id=s["SnapshotId"]) for v, s in first.items()]
        return Evidence(snapshots=sorted(found, key=lambda s: s.volume_id))

    def _locks(self, ctx: StepContext, evidence: Evidence) -> tuple[Change, ...]:
        """Each snapshot locked in governance mode for `SNAPSHOT_LOCK_DAYS` (none: not locked)."""
        days = ctx.settings.SNAPSHOT_LOCK_DAYS
        if not days:
            return ()
        return tuple(
            Change(
                f"lock {snapshot.snapshot_id} for {days} day(s)",
                ctx.ec2.lock_snapshot,
                {"SnapshotId": snapshot.snapshot_id, "LockMode": "governance", "LockDuration": days},
            )
            for snapshot in evidence.snapshots
        )


def _listed(evidence: Evidence, what: str) -> str:
    return f"{what}: " + ", ".join(f"{s.snapshot_id} ({s.volume_id})" for s in evidence.snapshots)
