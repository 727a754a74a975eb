"""The tamper watch: from a CloudTrail call that may have undone part of an isolation to the repairs it
asks for (QUEUED records, `source` `tamper`), one per instance whose latest isolation is ISOLATED, or
FAILED `TamperLoop` with its network cut in place (`IsolationRecord.watched`: the network cut is always
repaired; past the repair budget nothing else is).

Which instances a call touches:
- an instance id in the call (its parameters or, for `ReplaceIamInstanceProfileAssociation` and
  `DisassociateIamInstanceProfile`, whose parameters name only the association, its response): that one;
- a network interface: the isolated instance whose recorded prior state has it;
- a rule added to or changed on a security group, or an `ec2-isolation:` tag of one changed: when the
  group is an isolation group (one the service's table names, never known by its tags), the group is
  repaired once (its managed tag put back, its rules revoked: every isolation checks its group), by one
  repair of one isolated instance behind it (the lowest instance id of the VPC's, so that a redelivery
  asks for the same one), not one repair per instance;
- an `ec2-isolation:` tag of an instance changed (or every tag removed): that instance, re-tagged by its
  repair;
- a role policy of the service (`ec2-isolation*`): every isolated instance whose prior role it is;
- a snapshot: the isolation whose evidence lists it (the repair takes the episode's snapshots again).

An instance whose latest isolation is released, failed (but for `TamperLoop`) or skipped is left alone
(logged); one whose latest isolation is still in flight (a call on its interfaces or group finds it too:
its begin counts it among those isolated now) makes the call wait for it (`worker.tamper_app`: that
isolation may have passed the network cut before the call). Except the call's own repair: a redelivery of the call (its retry, or a
redrive of the tamper DLQ once the sweeper ended the repair `DeadLettered`) asks for it again, and the
attempt resumes it. A repair belongs to the episode of the isolation it repairs: it names it
in `inherits_from`, and the runner takes that episode's prior state from the instance's slot in the
service's own table (`shared.store.episodes`), whatever the call did to the instance's tags.

Which isolation is an instance's latest, and which instances are isolated now, come from the service's
own table read consistently (the slot; the sparse `isolated-now` index, each candidate confirmed), never
from the instance.
"""

from __future__ import annotations

import fnmatch

from shared.errors import RetryableError
from shared.lifecycle import Status
from shared.models import IsolationRecord, Source, Target
from shared.observability import logger
from worker.messages import Ignored, TamperCall
from worker.receive import WorkerDeps

#: Isolation ids of a record's episode are followed at most this far (coalesced records carry none).
_MAX_HOPS = 5


def repairs(call: TamperCall, deps: WorkerDeps) -> list[IsolationRecord]:
    """The repairs `call` asks for; raises `Ignored` when it touches no isolated instance."""
    role = deps.settings.TARGET_ROLE_NAME
    if call.issuer_arn and fnmatch.fnmatchcase(call.issuer_arn, f"arn:*:iam::*:role/{role}"):
        raise Ignored(f"{call.event_name} {call.event_id} was made by the execution role: the service's own")
    latest: dict[Target, IsolationRecord] = {}
    for instance_id in call.instance_ids:
        target = Target(account_id=call.account_id, region=call.region, instance_id=instance_id)
        record = _latest(deps, target)
        if record is not None:
            latest[target] = record
    indirect = _indirect(call, deps)
    for record in indirect:
        if record.target not in latest:
            latest[record.target] = _latest(deps, record.target) or record
    # A redelivery of the call (a retry, or a redrive of the tamper DLQ) finds its own repair latest: it
    # asks for it again, and the attempt resumes it (or finds it over).
    own = {
        target: record for target, record in latest.items() if record.isolation_id == call.repair_id(target)
    }
    others = {target: record for target, record in latest.items() if target not in own}
    in_flight = [r.isolation_id for r in others.values() if r.status in (Status.QUEUED, Status.IN_PROGRESS)]
    if in_flight:
        raise RetryableError(
            "IsolationInProgress",
            f"isolations {', '.join(in_flight)} are in flight: the call is looked at again once they end",
            wait="in-flight",
        )
    isolated = {target: record for target, record in others.items() if record.watched}
    if not isolated and not own:
        states = ", ".join(f"{t.instance_id} {r.status.value}" for t, r in latest.items()) or "none found"
        raise Ignored(f"{call.event_name} {call.event_id} touches no isolated instance ({states})")
    asked = [_repair(call, target, _episode(deps, record)) for target, record in isolated.items()]
    return asked + [_again(call, target, record, deps) for target, record in own.items()]


def _latest(deps: WorkerDeps, target: Target) -> IsolationRecord | None:
    """The instance's latest isolation: the one in flight, else its latest record that changed it (a
    SKIPPED record or a dry run changed nothing: they do not count), from the service's own table read
    consistently (`shared.store.episodes`)."""
    return deps.store.latest(target)


def _indirect(call: TamperCall, deps: WorkerDeps) -> list[IsolationRecord]:
    """The records of instances isolated now that the call's interfaces, group, role or snapshot belong
    to (the `isolated-now` index, each confirmed with consistent reads)."""
    if not call.names_other_resources:
        return []
    records = deps.store.isolated_now(call.account_id, call.search_region)
    found: list[IsolationRecord] = []
    for record in records:
        prior, evidence = record.prior_state, record.evidence
        interfaces = {i.id for i in prior.network_interfaces} if prior else set()
        if (
            interfaces & set(call.network_interface_ids)
            or (call.role_name and prior is not None and prior.role_name == call.role_name)
            or (
                call.snapshot_id
                and evidence
                and call.snapshot_id in {s.snapshot_id for s in evidence.snapshots}
            )
        ):
            found.append(record)
    for vpc in _isolation_group_vpcs(call, deps):
        # The group is repaired once: by the repair of one isolated instance behind it.
        behind = [r for r in records if _uses(r, vpc)]
        if behind:
            found.append(min(behind, key=lambda r: r.instance_id))
    return found


def _isolation_group_vpcs(call: TamperCall, deps: WorkerDeps) -> list[str]:
    """The VPCs of the call's groups that are isolation groups: groups the service's own table names
    (whatever the groups' tags say: the call may have removed them)."""
    if not call.security_group_ids:
        return []
    claims = deps.store.group_claims(call.account_id, call.region)
    ours = {claim.group_id: vpc for vpc, claim in claims.items() if claim.group_id}
    others = [group for group in call.security_group_ids if group not in ours]
    if others:
        logger.info("a call on groups that are not isolation groups", extra={"groups": others})
    return [ours[group] for group in call.security_group_ids if group in ours]


def _uses(record: IsolationRecord, vpc: str) -> bool:
    """The record's instance has an interface in `vpc` (behind its isolation group)."""
    if record.isolation_groups is not None and vpc in record.isolation_groups:
        return True
    return record.prior_state is not None and vpc in record.prior_state.vpc_ids


def _episode(deps: WorkerDeps, record: IsolationRecord) -> IsolationRecord:
    """The isolation whose prior state the episode carries (a coalesced record names it)."""
    for _ in range(_MAX_HOPS):
        if record.prior_state is not None or record.inherits_from is None:
            return record
        earlier = deps.store.get(record.inherits_from)
        if earlier is None:
            return record
        record = earlier
    return record


def _again(call: TamperCall, target: Target, own: IsolationRecord, deps: WorkerDeps) -> IsolationRecord:
    """The call's own repair, asked for again as it was first (in the episode it repairs)."""
    episode = deps.store.get(own.inherits_from) if own.inherits_from else None
    return _repair(call, target, episode) if episode is not None else own


def _repair(call: TamperCall, target: Target, episode: IsolationRecord) -> IsolationRecord:
    record = IsolationRecord.queued(
        isolation_id=call.repair_id(target),
        source=Source.TAMPER,
        target=target,
        reason=(
            f"tamper: {call.event_name} by {call.caller_arn or 'an unknown caller'} undid part of "
            f"{episode.isolation_id}"
            + (
                f" (on {', '.join(call.security_group_ids)}: the group is repaired once)"
                if call.security_group_ids
                else ""
            )
        ),
        trigger=call.trigger,
    )
    return record.model_copy(update={"inherits_from": episode.isolation_id})
