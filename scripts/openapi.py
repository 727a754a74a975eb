"""`make openapi`: write docs/openapi.json from the routes and their answer models.

Run it after changing the API; tests/unit/test_openapi.py fails while the committed document differs
from what the code generates.
"""

from __future__ import annotations

from pathlib import Path

from ingest.openapi import document

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"

if __name__ == "__main__":
    DOCUMENT.write_text(document())
    print(f"wrote {DOCUMENT}")
