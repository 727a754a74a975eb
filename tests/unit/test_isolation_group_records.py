"""Which isolation groups the service's own records name (the upgrade adopts only those), and the claim
item's shape as the store reads it."""

from __future__ import annotations

import pytest

from shared.lifecycle import Status
from shared.models import IsolationRecord, Source, StepRecord, Target
from shared.store.isolation_groups import claims_of, groups_named_by

pytestmark = pytest.mark.disable_socket

TARGET = Target(account_id="111122223333", region="eu-west-1", instance_id="i-0123456789abcdef0")


def _record(*steps: StepRecord, groups: dict[str, str] | None = None) -> IsolationRecord:
    record = IsolationRecord.queued(isolation_id="iso-" + "1" * 32, source=Source.WEBHOOK, target=TARGET)
    return record.model_copy(
        update={"status": Status.ISOLATED, "steps": list(steps), "isolation_groups": groups}
    )


@pytest.mark.parametrize(
    "detail",
    [
        "created sg-0123456789abcdef0 (vpc-0123456789abcdef0), its default rules revoked with the cut",
        "repaired sg-0123456789abcdef0 (vpc-0123456789abcdef0), 2 stray rule(s) revoked",
        "in place sg-0123456789abcdef0 (vpc-0123456789abcdef0)",
    ],
)
def test_an_older_records_step_names_its_group(detail: str) -> None:
    record = _record(StepRecord.done("ensure-isolation-sg", detail))
    assert groups_named_by(record) == {"vpc-0123456789abcdef0": "sg-0123456789abcdef0"}


def test_the_record_field_wins_and_other_steps_name_nothing() -> None:
    # A step of another name (its detail is partly the instance's own groups) names no isolation group
    swap = StepRecord.done(
        "swap-security-groups", "eni-1 [sg-0aaaaaaaaaaaaaaaa (vpc-0bbbbbbbbbbbbbbbb)] -> sg-1"
    )
    assert groups_named_by(_record(swap)) == {}
    named = _record(swap, groups={"vpc-0123456789abcdef0": "sg-0fedcba9876543210"})
    assert groups_named_by(named) == {"vpc-0123456789abcdef0": "sg-0fedcba9876543210"}


def test_the_claim_item_holds_vpcs_only() -> None:
    item = {
        "pk": "groups#111122223333#eu-west-1",
        "adopted_at": 1.0,
        "vpc-0123456789abcdef0": {
            "name": "ec2-isolation-ab",
            "claimed_at": 2,
            "group_id": "sg-0123456789abcdef0",
        },
        "vpc-0fedcba9876543210": {"name": "ec2-isolation-cd", "claimed_at": 3},
    }
    claims = claims_of(item)
    assert set(claims) == {"vpc-0123456789abcdef0", "vpc-0fedcba9876543210"}
    assert claims["vpc-0123456789abcdef0"].group_id == "sg-0123456789abcdef0"
    assert claims["vpc-0fedcba9876543210"].group_id is None
