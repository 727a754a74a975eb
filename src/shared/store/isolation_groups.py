"""Isolation groups: which security group is the isolation group of each VPC, as the service itself keeps
it. One item per account and region (`groups#<account>#<region>`), one attribute per VPC (named by the VPC
id) holding a map: the group's `name` (`ec2-isolation-<nonce>`, chosen when the VPC is claimed), when it
was claimed (`claimed_at`, epoch seconds) and, once the group exists, its `group_id`.

The VPC is claimed with a conditional write before its group is created, so two first isolations of one
VPC create one group (the other waits for the claim's group id); the group is created under the claimed
name, so a retry after a crash between the claim and the recording of the id finds it by that exact name.
A group that is not in this item is never used, whatever its name or tags: a member can make a group named
like the service's, with any tags. One item per account and region serves a worker's look-ahead (one read,
while the instances are described) and the tamper watch (which group ids are isolation groups).

Upgrade: a deployment of a version without this item adopts the groups its own ISOLATED records name:
their `isolation_groups`, or for older records the group and VPC their `ensure-isolation-sg` step names.
Never a group found by name or tag. The sweeper does it in one pass over the records for every account
and region, then marks the table done (`ADOPTED_EVERYWHERE`; on a new table its first run finds nothing
to adopt); until then, an isolation adopts its own account and region's before its first claim there
(`adopted_at` marks that done). Once the table is marked, a claim reads nothing more for it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import error_code
from shared.lifecycle import Status
from shared.models import IsolationRecord
from shared.observability import logger
from shared.store.dynamo import deserialize, epoch, key, serialize, updated_if
from shared.store.table import RecordTable

PREFIX = "groups#"
#: The item that says every account and region has adopted an earlier version's groups (not under
#: `PREFIX`: whoever reads the `groups#` items finds only accounts and regions there).
ADOPTED_EVERYWHERE = "adopted#groups"
#: Tables seen marked `ADOPTED_EVERYWHERE` (never undone): the mark is read once per environment.
_ADOPTED_TABLES: set[str] = set()


def forget_adopted() -> None:
    """Forget which tables were seen marked (a new table of the same name: tests, the local stack)."""
    _ADOPTED_TABLES.clear()


#: How an older record's `ensure-isolation-sg` step named the group of a VPC ("sg-… (vpc-…)").
_NAMED = re.compile(r"\b(sg-[0-9a-f]{8,17}) \((vpc-[0-9a-f]{8,17})\)")
ENSURE_STEP = "ensure-isolation-sg"


@dataclass(frozen=True)
class GroupClaim:
    """The claim of a VPC: the name its group is (or will be) created under, and its id once it exists."""

    vpc_id: str
    name: str
    claimed_at: float
    group_id: str | None = None
    #: The record a group of an earlier version was adopted from (no claim, no name of the new form).
    adopted_from: str | None = None


def groups_key(account_id: str, region: str) -> str:
    return f"{PREFIX}{account_id}#{region}"


def claims_of(item: dict[str, Any] | None) -> dict[str, GroupClaim]:
    """The claims an item (as `dynamo.deserialize` reads it) holds, by VPC."""
    claims: dict[str, GroupClaim] = {}
    for vpc_id, value in (item or {}).items():
        if not vpc_id.startswith("vpc-") or not isinstance(value, dict):
            continue
        group_id = value.get("group_id")
        claims[vpc_id] = GroupClaim(
            vpc_id=vpc_id,
            name=str(value.get("name") or ""),
            claimed_at=float(value.get("claimed_at") or 0),
            group_id=str(group_id) if group_id else None,
            adopted_from=value.get("adopted_from"),
        )
    return claims


def claim(
    table: str, account_id: str, region: str, vpc_id: str, name: str, *, now: Decimal
) -> dict[str, Any]:
    """The UpdateItem that claims the VPC for a group named `name` (refused when it is claimed already)."""
    return {
        "TableName": table,
        "Key": key(groups_key(account_id, region)),
        "UpdateExpression": "SET #vpc = :claim",
        "ConditionExpression": "attribute_not_exists(#vpc)",
        "ExpressionAttributeNames": {"#vpc": vpc_id},
        "ExpressionAttributeValues": serialize({":claim": {"name": name, "claimed_at": now}}),
    }


def record_id(
    table: str, account_id: str, region: str, vpc_id: str, name: str, group_id: str
) -> dict[str, Any]:
    """The UpdateItem that records the id of the group created under the claim `name` (refused when the
    VPC's claim is another one, or names another group already)."""
    return {
        "TableName": table,
        "Key": key(groups_key(account_id, region)),
        "UpdateExpression": "SET #vpc.#gid = :gid",
        "ConditionExpression": "#vpc.#name = :name AND (attribute_not_exists(#vpc.#gid) OR #vpc.#gid = :gid)",
        "ExpressionAttributeNames": {"#vpc": vpc_id, "#gid": "group_id", "#name": "name"},
        "ExpressionAttributeValues": serialize({":gid": group_id, ":name": name}),
    }


def adopt(
    table: str, account_id: str, region: str, vpc_id: str, group_id: str, isolation_id: str, *, now: Decimal
) -> dict[str, Any]:
    """The UpdateItem that adopts a group an earlier version created, as one of the service's own records
    names it (refused when the VPC has a claim already)."""
    return {
        "TableName": table,
        "Key": key(groups_key(account_id, region)),
        "UpdateExpression": "SET #vpc = :claim",
        "ConditionExpression": "attribute_not_exists(#vpc)",
        "ExpressionAttributeNames": {"#vpc": vpc_id},
        "ExpressionAttributeValues": serialize(
            {":claim": {"name": "", "claimed_at": now, "group_id": group_id, "adopted_from": isolation_id}}
        ),
    }


def forget(table: str, account_id: str, region: str, vpc_id: str, group_id: str) -> dict[str, Any]:
    """The UpdateItem that drops the VPC's claim when it still names `group_id` (a group that no longer
    exists: the next isolation of the VPC claims it anew)."""
    return {
        "TableName": table,
        "Key": key(groups_key(account_id, region)),
        "UpdateExpression": "REMOVE #vpc",
        "ConditionExpression": "#vpc.#gid = :gid",
        "ExpressionAttributeNames": {"#vpc": vpc_id, "#gid": "group_id"},
        "ExpressionAttributeValues": serialize({":gid": group_id}),
    }


def groups_named_by(record: IsolationRecord) -> dict[str, str]:
    """The isolation group of each VPC, as the service's own record names it (VPC -> group id)."""
    if record.isolation_groups:
        return dict(record.isolation_groups)
    named: dict[str, str] = {}
    for step in record.steps:
        if step.name == ENSURE_STEP:
            named.update((vpc, group) for group, vpc in _NAMED.findall(step.detail))
    return named


def adopted(table: str, account_id: str, region: str, *, now: Decimal) -> dict[str, Any]:
    """The UpdateItem that marks the account and region's adoption of an earlier version's groups done."""
    return {
        "TableName": table,
        "Key": key(groups_key(account_id, region)),
        "UpdateExpression": "SET adopted_at = if_not_exists(adopted_at, :now)",
        "ExpressionAttributeValues": serialize({":now": now}),
    }


class GroupRegistry(RecordTable):
    """The isolation-group half of `shared.store.IsolationStore`."""

    def adopt_earlier_groups(self, account_id: str, region: str) -> list[str]:
        """Once per account and region: adopt the groups the service's own ISOLATED records name there
        (an upgrade from a version without this table); the group ids adopted now. Nothing once the
        sweeper has adopted them everywhere."""
        if self.adopted_everywhere():
            return []
        found = self.client.get_item(
            TableName=self.table_name, Key=key(groups_key(account_id, region)), ConsistentRead=True
        ).get("Item")
        if found and "adopted_at" in found:
            return []
        # (the upgrade's one pass over the records, as the episodes' backfill does)
        isolated = (
            record
            for record in self.every_record()
            if (record.account_id, record.region, record.status) == (account_id, region, Status.ISOLATED)
        )
        adopted_now = [
            group_id
            for record in isolated
            for vpc_id, group_id in groups_named_by(record).items()
            if self.adopt_group(account_id, region, vpc_id, group_id, record.isolation_id)
        ]
        try:  # the mark only saves the next claim this pass: the pass is harmless twice
            self.client.update_item(**adopted(self.table_name, account_id, region, now=epoch(time.time())))
        except ClientError as exc:
            logger.warning("the adoption pass is not marked done", extra={"code": error_code(exc)})
        return adopted_now

    def adopt_every_earlier_group(self) -> int:
        """The sweeper's pass (once, after an upgrade): adopt the groups the service's own ISOLATED
        records name in every account and region, then mark the table done; once done, nothing (one read
        per environment). The number of groups adopted now."""
        if self.adopted_everywhere():
            return 0
        adopted_now = sum(
            self.adopt_group(record.account_id, record.region, vpc_id, group_id, record.isolation_id)
            for record in self.every_record()
            if record.status is Status.ISOLATED
            for vpc_id, group_id in groups_named_by(record).items()
        )
        self.client.put_item(
            TableName=self.table_name,
            Item={"pk": {"S": ADOPTED_EVERYWHERE}, "at": {"N": str(epoch(time.time()))}},
        )
        _ADOPTED_TABLES.add(self.table_name)
        return adopted_now

    def adopted_everywhere(self) -> bool:
        """Whether the sweeper has adopted an earlier version's groups everywhere (read once per
        environment, then known)."""
        if self.table_name in _ADOPTED_TABLES:
            return True
        if self.item(ADOPTED_EVERYWHERE) is None:
            return False
        _ADOPTED_TABLES.add(self.table_name)
        return True

    def group_claims(self, account_id: str, region: str) -> dict[str, GroupClaim]:
        """Every VPC's claim in the account and region (one consistent read)."""
        found = self.client.get_item(
            TableName=self.table_name, Key=key(groups_key(account_id, region)), ConsistentRead=True
        ).get("Item")
        return claims_of(deserialize(found) if found else None)

    def claim_group(self, account_id: str, region: str, vpc_id: str, name: str) -> GroupClaim:
        """Claim the VPC for a group named `name`: the claim that stands (this one, or the one made
        before it, whose group id may not be recorded yet)."""
        now = time.time()
        try:
            self.client.update_item(
                **claim(self.table_name, account_id, region, vpc_id, name, now=epoch(now))
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            standing = self.group_claims(account_id, region).get(vpc_id)
            if standing is not None:
                return standing
            # (dropped between the refusal and the read: claim again)
            return self.claim_group(account_id, region, vpc_id, name)
        return GroupClaim(vpc_id=vpc_id, name=name, claimed_at=now)

    def record_group(self, account_id: str, region: str, vpc_id: str, name: str, group_id: str) -> bool:
        """Record the id of the group created under the claim `name`; False when the claim is gone."""
        return self._conditionally(record_id(self.table_name, account_id, region, vpc_id, name, group_id))

    def adopt_group(
        self, account_id: str, region: str, vpc_id: str, group_id: str, isolation_id: str
    ) -> bool:
        """Adopt the group an earlier version created, as the record `isolation_id` names it; False when
        the VPC has a claim already."""
        return self._conditionally(
            adopt(self.table_name, account_id, region, vpc_id, group_id, isolation_id, now=epoch(time.time()))
        )

    def forget_group(self, account_id: str, region: str, vpc_id: str, group_id: str) -> bool:
        """Drop the VPC's claim when it names `group_id` (a group that no longer exists)."""
        return self._conditionally(forget(self.table_name, account_id, region, vpc_id, group_id))

    def _conditionally(self, request: dict[str, Any]) -> bool:
        return updated_if(self.client, request)
