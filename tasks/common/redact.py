"""What may leave this machine: a URL without its credentials (for logs, document metadata, lineage)."""
from __future__ import annotations

import re


def public_url(url: str) -> str:
    """`url` without user:password@, fit for logs and document metadata."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url)
