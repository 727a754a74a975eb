"""Containment: the isolation security group of each VPC, alone on every network interface; and its
inverse in a release, `restore-security-groups`: each interface still attached gets its prior groups.

The isolation group of a VPC is the group the service's own table names (`shared.store.isolation_groups`),
never one found by name or tag: a member can make a group named like the service's, with any tags and
rules. The first isolation of a VPC claims it in the table (a conditional write), creates the group under
the claimed name (`ec2-isolation-<nonce>`, tagged `ec2-isolation:managed=true`) and records its id; a
racer waits for that id, and a retry after a crash finds the group by the claimed name.

Every isolation checks the group it uses while the interfaces are cut: described, its managed tag put
back when someone removed it (the member role may revoke rules of tagged groups only), every rule it has
revoked. The instance is contained once both are done; a group created now loses its default rules the
same way, so the cut never waits for the check.

AWS behaviour this respects:
- groups are found by VPC (`vpc-id` + `group-name` filters), never by `GroupNames`, which only finds
  groups of the default VPC;
- a new group gets allow-all egress (IPv4, and IPv6 in a VPC with an IPv6 CIDR): revoke what
  DescribeSecurityGroups shows, not an assumed shape;
- right after CreateSecurityGroup other calls may answer `InvalidGroup.NotFound` for a while;
- `ModifyInstanceAttribute(Groups=...)` fails on multi-ENI instances: set groups per interface.

A batch contains its instances at once (`worker.batch`): the group of a VPC is found or created by one
thread while the others of that VPC wait for it (and share its check), and the interfaces of an instance
are cut concurrently. A worker that knows no group of the account and region yet reads their claims (one
read of the table) while DescribeInstances tells it the instances' VPCs.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import RetryableError, error_code
from shared.models import NetworkInterfaceState, StepRecord, Target
from shared.store.isolation_groups import GroupClaim
from worker.at_once import begun
from worker.consistency import WaitedOut, until_consistent, wait_for
from worker.instance import Instance
from worker.steps.base import Change, Plan, Step, StepContext
from worker.steps.group_check import MANAGED_TAG, GroupCheck
from worker.steps.release import ReleaseContext, release_outcome

_NOT_YET = frozenset({"InvalidGroup.NotFound"})
#: A claim younger than this whose group is not visible may be EC2's eventual consistency; an older one
#: names a group that is gone (the next isolation claims the VPC anew).
_YOUNG_CLAIM_SECONDS = 300.0
#: How long a racer waits (at most) for the group id of another worker's claim before it finds or creates
#: the group under the claimed name itself (the claimer may have died).
CLAIM_WAIT_SECONDS = 3.5

_Key = tuple[str, str, str]  # account, region, VPC

# Warm-Lambda cache of the table's claims with a group id, by (account, region, VPC).
_groups: dict[_Key, GroupClaim] = {}
_groups_lock = threading.Lock()
#: One lock per VPC's group: concurrent isolations in one VPC find or create its group once.
_group_locks: dict[_Key, threading.Lock] = {}


@dataclass(frozen=True)
class _Checking:
    group_id: str
    check: Future[GroupCheck]


#: Checks of groups under way, by the key of `_groups`: batch-mates of one VPC share one.
_checking: dict[_Key, _Checking] = {}


def forget_cached_groups() -> None:
    with _groups_lock:
        _groups.clear()
        _group_locks.clear()
        _checking.clear()


def _checked(key: _Key, check: Future[GroupCheck]) -> None:
    with _groups_lock:
        if key in _checking and _checking[key].check is check:
            del _checking[key]


def _group_lock(key: _Key) -> threading.Lock:
    with _groups_lock:
        return _group_locks.setdefault(key, threading.Lock())


def _cache_key(ctx: StepContext, vpc_id: str) -> _Key:
    return (ctx.target.account_id, ctx.target.region, vpc_id)


def knows_groups_of(account_id: str, region: str) -> bool:
    """True when this environment has the isolation group of some VPC of the account and region cached."""
    with _groups_lock:
        return any(key[:2] == (account_id, region) for key in _groups)


def planned_cut(target: Target, instance: Instance, groups_seen: dict[str, GroupClaim] | None) -> list[str]:
    """The steps of the network cut that will change the instance, as far as they are known before the
    record's begin, which puts them on record (`StepContext.note_plans`, for the other phases): the swap,
    unless every interface has only the isolation group of its VPC as this environment knows it. (The
    group itself is claimed in the service's table before it is created: `claimed_elsewhere`.)"""
    state = instance.state
    for interface in state.network_interfaces:
        vpc_id = state.vpc_of(interface)
        with _groups_lock:
            claim = _groups.get((target.account_id, target.region, vpc_id))
        claim = claim or (groups_seen or {}).get(vpc_id)
        if claim is None or not _isolated(interface, claim.group_id):
            return [SwapSecurityGroups.name]
    return []


def _isolated(interface: NetworkInterfaceState, group_id: str | None) -> bool:
    return group_id is not None and interface.security_group_ids == [group_id]


def group_name(prefix: str) -> str:
    """A new isolation group's name: the prefix and a nonce nobody can guess before the group exists."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class GroupGone(RetryableError):
    """The table's group of a VPC no longer exists: its claim is dropped, the next attempt claims anew."""


class EnsureIsolationSecurityGroup(Step):
    name = "ensure-isolation-sg"
    permissions = (
        "ec2:DescribeSecurityGroups",
        "ec2:CreateSecurityGroup",
        "ec2:CreateTags",
        "ec2:RevokeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupIngress",
    )
    #: The group is the service's own, claimed in its table before it is created.
    claimed_elsewhere = True

    def plan(self, ctx: StepContext) -> Plan:
        """Each VPC's group ensured, one VPC after another. A run decides under the VPC's lock, not
        before it (its batch-mates find or create the same group, and share its check), and the group is
        described, retagged and stripped by that check, in the background while the interfaces are cut:
        so the run's plan is one change per VPC, made under the lock (`_ensure`). A dry run takes no lock
        and begins no check: its plan reads the group as the check would, and names each change."""
        if ctx.dry_run:
            return self._as_it_stands(ctx)
        changes = [
            Change(
                f"ensure the isolation group of {vpc_id}",
                ctx.ec2.create_security_group,
                apply_by=partial(self._ensure, ctx, vpc_id),
            )
            for vpc_id in ctx.instance.state.vpc_ids
        ]
        return Plan.making(self._ensured, *changes)

    def _ensure(self, ctx: StepContext, vpc_id: str) -> tuple[str, bool]:
        """The VPC's group (found, or claimed and created) with its check begun; its label, and whether
        this isolation created it."""
        key = _cache_key(ctx, vpc_id)
        with _group_lock(key):
            with _groups_lock:
                checking, cached = _checking.get(key), _groups.get(key)
            if checking is not None:  # a batch-mate checks it now: one check serves both
                group_id, check, new = checking.group_id, checking.check, False
            else:
                claim = cached or self._known(ctx, vpc_id)
                if claim is not None and claim.group_id is not None:
                    group_id, new = claim.group_id, False
                else:
                    claim, new = self._claim_and_create(ctx, vpc_id)
                    assert claim.group_id is not None
                    group_id = claim.group_id
                check = begun(partial(self._check, ctx, vpc_id, claim, new))
                with _groups_lock:
                    _groups[key] = claim
                    _checking[key] = _Checking(group_id, check)
                check.add_done_callback(partial(_checked, key))
        ctx.isolation_groups[vpc_id] = group_id
        ctx.revoking[group_id] = check
        return f"{group_id} ({vpc_id})", new

    def _ensured(self, results: list[Any]) -> StepRecord:
        created = [f"{label}, its default rules revoked with the cut" for label, new in results if new]
        reused = [f"{label}, its rules checked with the cut" for label, new in results if not new]
        parts = [f"created {', '.join(created)}"] * bool(created) + [f"in place {', '.join(reused)}"] * bool(
            reused
        )
        detail = "; ".join(parts)
        return StepRecord.done(self.name, detail) if created else StepRecord.already(self.name, detail)

    def _as_it_stands(self, ctx: StepContext) -> Plan:
        """A dry run's plan: for each VPC, the group to create, or the group's tag to put back and its
        rules to revoke (what the run's check would do); in place when there is nothing to do."""
        changes: list[Change] = []
        settled: list[str] = []
        for vpc_id in ctx.instance.state.vpc_ids:
            claim = ctx.groups.group_claims(ctx.target.account_id, ctx.target.region).get(vpc_id)
            group = None
            if claim is not None and claim.group_id is not None:
                try:
                    group = self._describe(ctx, claim.group_id)
                except ClientError as exc:
                    if error_code(exc) not in _NOT_YET:
                        raise
            if group is None:
                changes.append(
                    Change(
                        f"create the isolation group of {vpc_id}",
                        ctx.ec2.create_security_group,
                        _creation(ctx, vpc_id, group_name(ctx.settings.ISOLATION_SG_NAME)),
                    )
                )
                continue
            group_id = group["GroupId"]
            ctx.isolation_groups[vpc_id] = group_id  # the cut's dry run names it
            if not _managed(group):
                changes.append(
                    Change(
                        f"restore the tag {MANAGED_TAG} of {group_id} ({vpc_id})",
                        ctx.ec2.create_tags,
                        {"Resources": [group_id], "Tags": [{"Key": MANAGED_TAG, "Value": "true"}]},
                    )
                )
            rule_sets = _rule_sets(ctx, group)
            for rules, revoke in rule_sets:
                count = sum(_rule_count(rule) for rule in rules)
                changes.append(
                    Change(
                        f"revoke {count} rule(s) of {group_id} ({vpc_id})",
                        revoke,
                        {"GroupId": group_id, "IpPermissions": [_as_request(rule) for rule in rules]},
                    )
                )
            if not rule_sets and _managed(group):
                settled.append(f"{group_id} ({vpc_id})")
        unchanged = f"in place {', '.join(settled)}" if settled else ""
        if not changes:
            return Plan.nothing(StepRecord.already(self.name, unchanged))
        return Plan.making("", *changes, unchanged=unchanged)

    # --- which group ----------------------------------------------------------------------------------

    def _known(self, ctx: StepContext, vpc_id: str) -> GroupClaim | None:
        """The VPC's claim in the service's table: as looked up with the instance, else read now."""
        seen = ctx.groups_seen
        if seen is not None:
            return seen.get(vpc_id)
        return ctx.groups.group_claims(ctx.target.account_id, ctx.target.region).get(vpc_id)

    def _claim_and_create(self, ctx: StepContext, vpc_id: str) -> tuple[GroupClaim, bool]:
        """The VPC's claim with its group id, and whether this isolation created the group: claim the VPC
        (or find the claim made before), then create the group under the claimed name, or wait for the
        claimer to record it."""
        account, region = ctx.target.account_id, ctx.target.region
        # A deployment upgraded from a version without the table: the groups its own records name first
        # (once per account and region).
        if ctx.groups.adopt_earlier_groups(account, region):
            adopted = ctx.groups.group_claims(account, region).get(vpc_id)
            if adopted is not None and adopted.group_id is not None:
                return adopted, False
        name = group_name(ctx.settings.ISOLATION_SG_NAME)
        claim = ctx.groups.claim_group(account, region, vpc_id, name)
        if claim.group_id is not None:
            return claim, False
        if claim.name != name:
            claim = self._await_claim(ctx, claim)
            if claim.group_id is not None:
                return claim, False
        # This claim, or one whose claimer did not record its group in time (it may have died): the group
        # is created under the claimed name, or found by it.
        group_id = self._create_or_find(ctx, vpc_id, claim.name)
        if not ctx.groups.record_group(account, region, vpc_id, claim.name, group_id):
            standing = ctx.groups.group_claims(account, region).get(vpc_id)
            if standing is None or standing.group_id is None:
                raise RetryableError(
                    "IsolationGroupClaimLost", f"the claim of {vpc_id} changed while its group was created"
                )
            return standing, False
        return GroupClaim(vpc_id, claim.name, claim.claimed_at, group_id), True

    def _await_claim(self, ctx: StepContext, claim: GroupClaim) -> GroupClaim:
        """Another worker's claim, once it names its group (or as it stands after `CLAIM_WAIT_SECONDS`:
        its claimer may have died, and this isolation takes the claim over)."""
        standing = claim

        def named() -> bool:
            nonlocal standing
            now = ctx.groups.group_claims(ctx.target.account_id, ctx.target.region).get(claim.vpc_id)
            if now is None:
                raise RetryableError("IsolationGroupClaimLost", f"the claim of {claim.vpc_id} was dropped")
            standing = now
            return now.group_id is not None

        with suppress(WaitedOut):  # past the wait: take the claim over as it stands
            wait_for(
                named,
                budget_seconds=CLAIM_WAIT_SECONDS,
                first_delay=0.1,
                max_delay=1.0,
                sleep=ctx.sleep,
                code="IsolationGroupClaimHeld",
                message=f"the claim of {claim.vpc_id} names no group yet",
                wait_first=True,  # the claim was read just now
            )
        return standing

    def _create_or_find(self, ctx: StepContext, vpc_id: str, name: str) -> str:
        """Create the VPC's group under the claimed name, or find it by that exact name when it exists
        (created by this claim's earlier attempt, or by a racer taking over the same claim)."""
        try:
            return str(ctx.ec2.create_security_group(**_creation(ctx, vpc_id, name))["GroupId"])
        except ClientError as exc:
            if error_code(exc) != "InvalidGroup.Duplicate":
                raise
        group = self._consistently(ctx, lambda: self._find_or_raise(ctx, vpc_id, name), f"group {name}")
        return str(group["GroupId"])

    def _find(self, ctx: StepContext, vpc_id: str, name: str) -> dict[str, Any] | None:
        groups = ctx.ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": [name]},
            ]
        )["SecurityGroups"]
        return groups[0] if groups else None

    def _find_or_raise(self, ctx: StepContext, vpc_id: str, name: str) -> dict[str, Any]:
        group = self._find(ctx, vpc_id, name)
        if group is None:
            raise ClientError(
                {"Error": {"Code": "InvalidGroup.NotFound", "Message": "not visible yet"}},
                "DescribeSecurityGroups",
            )
        return group

    # --- the check ------------------------------------------------------------------------------------

    def _check(self, ctx: StepContext, vpc_id: str, claim: GroupClaim, new: bool) -> GroupCheck:
        """Describe the group, put its managed tag back when it is missing, revoke every rule it has."""
        group_id = claim.group_id
        assert group_id is not None
        young = new or time.time() - claim.claimed_at < _YOUNG_CLAIM_SECONDS
        try:
            if young:  # may not be visible yet
                group = self._consistently(ctx, lambda: self._describe(ctx, group_id), f"group {group_id}")
            else:
                group = self._describe(ctx, group_id)
        except ClientError as exc:
            if error_code(exc) not in _NOT_YET:
                raise
            self._gone(ctx, vpc_id, group_id)
            raise GroupGone(
                "IsolationGroupGone",
                f"the isolation group {group_id} of {vpc_id} no longer exists: claimed anew",
            ) from exc
        retagged = not _managed(group)
        if retagged:
            ctx.ec2.create_tags(Resources=[group_id], Tags=[{"Key": MANAGED_TAG, "Value": "true"}])
        return GroupCheck(group_id, self._strip(ctx, group), retagged, new)

    def _gone(self, ctx: StepContext, vpc_id: str, group_id: str) -> None:
        with _groups_lock:
            _groups.pop(_cache_key(ctx, vpc_id), None)
        ctx.groups.forget_group(ctx.target.account_id, ctx.target.region, vpc_id, group_id)

    def _describe(self, ctx: StepContext, group_id: str) -> dict[str, Any]:
        return ctx.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]

    def _consistently(self, ctx: StepContext, call: Any, what: str) -> dict[str, Any]:
        return until_consistent(
            call,
            codes=_NOT_YET,
            budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
            sleep=ctx.sleep,
            what=what,
        )

    def _strip(self, ctx: StepContext, group: dict[str, Any]) -> int:
        """Revoke every rule the group has, ingress and egress, IPv4 and IPv6."""
        revoked = 0
        for rules, revoke in _rule_sets(ctx, group):
            permissions = [_as_request(rule) for rule in rules]

            def call(permissions: list[dict[str, Any]] = permissions, revoke: Any = revoke) -> None:
                try:
                    revoke(GroupId=group["GroupId"], IpPermissions=permissions)
                except ClientError as exc:
                    if error_code(exc) != "InvalidPermission.NotFound":  # gone already: fine
                        raise

            until_consistent(
                call,
                codes=_NOT_YET,
                budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
                sleep=ctx.sleep,
                what=f"revoke rules of {group['GroupId']}",
            )
            revoked += sum(_rule_count(rule) for rule in rules)
        return revoked


class SwapSecurityGroups(Step):
    name = "swap-security-groups"
    permissions = ("ec2:ModifyNetworkInterfaceAttribute",)

    def plan(self, ctx: StepContext) -> Plan:
        state = ctx.instance.state
        changes: list[Change] = []
        changed: list[str] = []
        unchanged: list[str] = []
        for interface in state.network_interfaces:
            vpc_id = state.vpc_of(interface)
            group_id = ctx.isolation_groups.get(vpc_id)
            if _isolated(interface, group_id):
                unchanged.append(interface.id)
                continue
            # In a dry run the VPC's group may not exist yet (ensure-isolation-sg would create it): EC2
            # authorises the same kinds of resource with the interface's own groups.
            groups = [group_id] if group_id is not None else interface.security_group_ids
            changes.append(
                Change(
                    f"put {group_id or 'the new isolation group'} alone on {interface.id}",
                    ctx.ec2.modify_network_interface_attribute,
                    {"NetworkInterfaceId": interface.id, "Groups": groups},
                    apply_by=partial(self._set, ctx, interface.id, vpc_id, group_id),
                )
            )
            changed.append(f"{interface.id} [{', '.join(interface.security_group_ids) or '-'}] -> {group_id}")
        isolated = f"only the isolation group on {', '.join(unchanged)}"
        if not changes:
            # Contained already; the groups' check (begun by ensure-isolation-sg) may still revoke rules.
            revoked = _revoked(ctx)
            if revoked:
                return Plan.nothing(StepRecord.done(self.name, isolated + revoked))
            return Plan.nothing(StepRecord.already(self.name, isolated))

        def cut(_: list[Any]) -> StepRecord:
            tail = f"; already isolated: {', '.join(unchanged)}" if unchanged else ""
            return StepRecord.done(self.name, "; ".join(changed) + tail + _revoked(ctx))

        # Every interface at once: the last cut, not the sum of them, is when the instance is contained.
        # Each group is checked meanwhile (ensure-isolation-sg began it: a new group's default rules, or
        # whatever rule someone added, revoked): the instance is contained once both are done.
        return Plan.making(cut, *changes, unchanged=isolated if unchanged else "", side_by_side=True)

    def _set(self, ctx: StepContext, eni_id: str, vpc_id: str, group_id: str | None) -> None:
        assert group_id is not None, "ensure-isolation-sg names the group of every VPC before the cut"

        def call() -> None:
            ctx.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id, Groups=[group_id])

        try:
            until_consistent(
                call,
                codes=_NOT_YET,
                budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
                sleep=ctx.sleep,
                what=f"ModifyNetworkInterfaceAttribute {eni_id}",
            )
        except RetryableError:
            # The cached group may have been deleted behind our back: the table is read afresh next time
            # (and the check of the group drops a claim whose group is gone).
            with _groups_lock:
                _groups.pop(_cache_key(ctx, vpc_id), None)
            raise


def _revoked(ctx: StepContext) -> str:
    """What the checks of the instance's groups revoked, once they are done ("" when nothing)."""
    return "".join(f"; {summary}" for check in ctx.revoking.values() if (summary := check.result().summary()))


class RestoreSecurityGroups(Step):
    """The inverse, in a release: each interface still attached gets its prior groups (those that still
    exist); an interface none of whose groups exist keeps the isolation group."""

    name = "restore-security-groups"
    permissions = ("ec2:DescribeSecurityGroups", "ec2:ModifyNetworkInterfaceAttribute")

    def plan(self, ctx: StepContext) -> Plan:
        attached = {i.id: i.security_group_ids for i in ctx.instance.state.network_interfaces}
        wanted = sorted({g for i in ctx.prior.network_interfaces for g in i.security_group_ids})
        existing = self._existing(ctx, wanted)
        changes: list[Change] = []
        done: list[str] = []
        already: list[str] = []
        skipped: list[str] = []
        for interface in ctx.prior.network_interfaces:
            if interface.id not in attached:
                skipped.append(f"{interface.id} is no longer attached to the instance: left as it is")
                continue
            groups = [g for g in interface.security_group_ids if g in existing]
            gone = [g for g in interface.security_group_ids if g not in existing]
            if not groups:
                skipped.append(
                    f"{interface.id}: its groups {', '.join(gone) or '-'} no longer exist: isolation group kept"
                )
                continue
            missing = f" ({', '.join(gone)} no longer exist)" if gone else ""
            if sorted(attached[interface.id]) == sorted(groups):
                already.append(f"{interface.id} has [{', '.join(groups)}]{missing}")
                continue
            changes.append(
                Change(
                    f"put [{', '.join(groups)}] back on {interface.id}",
                    ctx.ec2.modify_network_interface_attribute,
                    {"NetworkInterfaceId": interface.id, "Groups": groups},
                )
            )
            done.append(f"{interface.id} -> [{', '.join(groups)}]{missing}")
        if not changes:
            _network_back(ctx, bool(already))
            return Plan.nothing(release_outcome(self.name, [], already, skipped))

        def restored(_: list[Any]) -> StepRecord:
            _network_back(ctx, True)
            return release_outcome(self.name, done, already, skipped)

        return Plan.making(restored, *changes)

    def _existing(self, ctx: StepContext, group_ids: list[str]) -> set[str]:
        if not group_ids:
            return set()
        found: set[str] = set()
        paginator = ctx.ec2.get_paginator("describe_security_groups")
        for page in paginator.paginate(Filters=[{"Name": "group-id", "Values": group_ids}]):
            found.update(g["GroupId"] for g in page["SecurityGroups"])
        return found


def _network_back(ctx: StepContext, back: bool) -> None:
    """Tell the release's later steps whether some interface has its prior groups again (it can pass a
    health check)."""
    if isinstance(ctx, ReleaseContext):
        ctx.network_back = back


def _creation(ctx: StepContext, vpc_id: str, name: str) -> dict[str, Any]:
    """CreateSecurityGroup's parameters for the VPC's isolation group (tagged managed on creation)."""
    return {
        "GroupName": name,
        "Description": "ec2-isolation: no ingress, no egress. Do not add rules.",
        "VpcId": vpc_id,
        "TagSpecifications": [
            {"ResourceType": "security-group", "Tags": [{"Key": MANAGED_TAG, "Value": "true"}]}
        ],
    }


def _managed(group: dict[str, Any]) -> bool:
    return {"Key": MANAGED_TAG, "Value": "true"} in group.get("Tags", [])


def _rule_sets(ctx: StepContext, group: dict[str, Any]) -> list[tuple[list[dict[str, Any]], Any]]:
    """The group's egress and ingress rules (those it has), each with the call that revokes them."""
    return [
        (rules, revoke)
        for rules, revoke in (
            (group.get("IpPermissionsEgress", []), ctx.ec2.revoke_security_group_egress),
            (group.get("IpPermissions", []), ctx.ec2.revoke_security_group_ingress),
        )
        if rules
    ]


def _as_request(rule: dict[str, Any]) -> dict[str, Any]:
    """A described rule as a revoke request accepts it (descriptions and ids dropped)."""
    request: dict[str, Any] = {"IpProtocol": rule["IpProtocol"]}
    for key in ("FromPort", "ToPort"):
        if key in rule:
            request[key] = rule[key]
    if rule.get("IpRanges"):
        request["IpRanges"] = [{"CidrIp": r["CidrIp"]} for r in rule["IpRanges"]]
    if rule.get("Ipv6Ranges"):
        request["Ipv6Ranges"] = [{"CidrIpv6": r["CidrIpv6"]} for r in rule["Ipv6Ranges"]]
    if rule.get("PrefixListIds"):
        request["PrefixListIds"] = [{"PrefixListId": p["PrefixListId"]} for p in rule["PrefixListIds"]]
    if rule.get("UserIdGroupPairs"):
        request["UserIdGroupPairs"] = [
            {k: v for k, v in pair.items() if k in ("GroupId", "UserId", "VpcId", "VpcPeeringConnectionId")}
            for pair in rule["UserIdGroupPairs"]
        ]
    return request


def _rule_count(rule: dict[str, Any]) -> int:
    return max(
        1,
        len(rule.get("IpRanges", []))
        + len(rule.get("Ipv6Ranges", []))
        + len(rule.get("PrefixListIds", []))
        + len(rule.get("UserIdGroupPairs", [])),
    )
