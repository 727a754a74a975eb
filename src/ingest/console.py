"""The responders' status page (`GET /console`): one static HTML document, its script and styles inline,
allowed by hash in a strict Content-Security-Policy (nothing from another origin, no inline code but
those two blocks, no framing, no form posts). It holds no data and needs no key to load; every call it
makes sends the key the person enters (kept in the tab's session storage only)."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

PAGE = Path(__file__).with_name("console.html")


@cache
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


@cache
def headers() -> dict[str, str]:
    html = page()
    scripts = " ".join(_hash(block) for block in re.findall(r"<script>(.*?)</script>", html, re.S))
    styles = " ".join(_hash(block) for block in re.findall(r"<style>(.*?)</style>", html, re.S))
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _hash(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode() + "'"
