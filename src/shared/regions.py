"""Which regions an isolation may target: the regions of the AWS partition the service runs in.

The list comes from botocore's own partition data (`botocore/data/partitions.json`, a few KB read from
the installed package, no network call), so it grows with botocore. A region AWS opened after the
installed botocore was released is admitted through the `EXTRA_REGIONS` setting until botocore is
updated.

The service builds `arn:aws:...` ARNs (the execution role, the instance), so it runs in the `aws`
partition: a region of another partition (`cn-north-1`, `us-gov-west-1`) could not be reached either.
"""

from __future__ import annotations

from functools import cache

from botocore.loaders import create_loader

PARTITION = "aws"


@cache
def partition_regions() -> frozenset[str]:
    """The region names of `PARTITION` that botocore knows (read once per process)."""
    data = create_loader().load_data("partitions")
    (partition,) = (entry for entry in data["partitions"] if entry["id"] == PARTITION)
    # `aws-global` is an endpoint name, not a place an instance runs.
    return frozenset(name for name in partition["regions"] if not name.endswith("-global"))


def known_region(region: str, extra: frozenset[str] = frozenset()) -> bool:
    """True when `region` is a region of the partition, or one the deployment admits in `extra`."""
    return region in extra or region in partition_regions()
