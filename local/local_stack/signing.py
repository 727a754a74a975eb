"""SigV4 for the client's calls that a deployed API authorizes with IAM (the release route): botocore's
signer, service `execute-api`, the caller's credentials from the default chain (environment, shared
files and profiles, SSO, container or instance role). Imported only when a request is signed, so the
other commands need no AWS credentials and load no botocore."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

#: A deployed API's own address: https://{api id}.execute-api.{region}.amazonaws.com[.cn]/{stage}/...
EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(?:\.cn)?$")
SERVICE = "execute-api"


class NoCredentials(Exception):
    """No AWS credentials in the default chain."""


def deployed_region(url: str) -> str | None:
    """The region of a deployed (execute-api) API's URL; None for any other address (`make run`'s)."""
    parts = urlsplit(url)
    found = EXECUTE_API_HOST.match((parts.hostname or "").lower()) if parts.scheme == "https" else None
    return found.group(1) if found else None


def sigv4_headers(
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    *,
    region: str,
    credentials: Any = None,
) -> dict[str, str]:
    """`headers` plus the SigV4 ones (Authorization, X-Amz-Date and, for temporary credentials,
    X-Amz-Security-Token) for this exact request. The headers given (the API key among them) are signed."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.session import get_session

    if credentials is None:
        credentials = get_session().get_credentials()
    if credentials is None:
        raise NoCredentials(
            "no AWS credentials found (environment, ~/.aws profiles, SSO or a role): release on a deployed "
            "API is signed with yours (SigV4, execute-api:Invoke)"
        )
    request = AWSRequest(method=method, url=url, data=body or b"", headers=dict(headers))
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}
