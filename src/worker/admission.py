"""Whether the worker may act on a target at all, checked before any call to its account: an isolation's
and a release's first check (ingest refuses the same requests with a 4xx before they are queued)."""

from __future__ import annotations

from shared.config import WorkerSettings
from shared.errors import PermanentError
from shared.models import Target
from shared.regions import known_region


def admit(target: Target, settings: WorkerSettings) -> None:
    """Raise `PermanentError` when `target`'s account is not allowed, or its region is not one of the
    partition's: a made-up region (a trigger's, or a message not from ingest) would only ever time out or
    answer HTML, so no call is made, and retrying cannot help."""
    if not settings.account_allowed(target.account_id):
        raise PermanentError(
            "AccountNotAllowed", f"account {target.account_id} is not in the allowed accounts"
        )
    if not known_region(target.region, settings.EXTRA_REGIONS):
        raise PermanentError(
            "UnknownRegion",
            f"{target.region} is not a region of the aws partition (EXTRA_REGIONS admits a new one)",
        )
