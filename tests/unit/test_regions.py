"""shared.regions.known_region: the partition's regions from botocore's data, plus the deployment's extras."""

from __future__ import annotations

import json
import subprocess
import sys

import botocore
import pytest

from shared.regions import known_region, partition_regions

pytestmark = pytest.mark.disable_socket


@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1", "ap-southeast-2", "il-central-1", "ca-west-1"])
def test_regions_of_the_partition_are_known(region: str) -> None:
    assert known_region(region)


@pytest.mark.parametrize(
    "region",
    [
        "eu-wset-1",  # a typo
        "eu-west-9",
        "xx-" + "a" * 145 + "-1",  # matches the region pattern, 150 characters
        "aws-global",  # an endpoint name, not a place
        "us-gov-west-1",  # another partition
        "cn-north-1",
        "EU-WEST-1",
        "",
    ],
)
def test_other_names_are_not_known(region: str) -> None:
    assert not known_region(region)


def test_extra_regions_are_admitted() -> None:
    # Given a region botocore does not know yet, admitted by the deployment
    extra = frozenset({"eu-future-1"})

    # When it is checked
    # Then it is known, and the partition's regions still are
    assert known_region("eu-future-1", extra)
    assert known_region("eu-west-1", extra)
    assert not known_region("eu-future-2", extra)


def test_the_list_is_botocores_own() -> None:
    # Given botocore's partition data as shipped
    with open(f"{botocore.__path__[0]}/data/partitions.json") as data:
        (aws,) = (p for p in json.load(data)["partitions"] if p["id"] == "aws")

    # Then every region it names for the partition is known, and nothing else
    assert partition_regions() == {name for name in aws["regions"] if name != "aws-global"}


def test_the_first_check_costs_under_5_ms_in_a_fresh_process() -> None:
    # Given a fresh interpreter with botocore loaded (the ingest handler imports boto3 anyway)
    code = (
        "import time, botocore.loaders; t = time.perf_counter(); "
        "from shared.regions import known_region; known_region('eu-west-1'); "
        "print((time.perf_counter() - t) * 1000)"
    )

    # When the module is imported and asked once
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]

    # Then the cold cost is a few milliseconds at most (about 1 ms measured)
    assert min(runs) < 5, runs
