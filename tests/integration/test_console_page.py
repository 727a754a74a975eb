"""GET /console: the status page is one static document, its code allowed by hash in a strict
Content-Security-Policy, with no data of its own (the browser test in tests/e2e uses it for real)."""

from __future__ import annotations

import base64
import hashlib
import re

from tests.conftest import Stack
from tests.support.events import api_event, lambda_context

from ingest.app import lambda_handler


def test_the_page_is_served_with_a_strict_policy(stack: Stack) -> None:
    # When the page is asked for
    response = lambda_handler(api_event("GET", "/console"), lambda_context())

    # Then it is HTML, never cached, never framed, with a policy that allows exactly its own two blocks
    assert response["statusCode"] == 200
    headers = {k.lower(): v[0] for k, v in response["multiValueHeaders"].items()}
    assert headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    html = response["body"]
    for directive, tag in (("script-src", "script"), ("style-src", "style")):
        [block] = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["form-action"] == "'none'"
    # And nothing is loaded from elsewhere, and no value is ever put in as HTML
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html and "document.write" not in html
