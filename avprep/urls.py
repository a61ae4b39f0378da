"""Whether a path a user gave is a URL: remote storage is not read or written yet, and
pathlib would turn ``s3://b/x`` into the local folder ``s3:/b/x``."""

from __future__ import annotations

import re
from pathlib import Path

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def remote_scheme(text: str | Path) -> str | None:
    """The scheme of a URL (``s3``, ``gs``, ``https``), None for a local path."""
    m = _URL.match(str(text))
    return m.group(1).lower() if m else None


def refusal(text: str | Path) -> str | None:
    """The one-line refusal for a URL where a local path is needed, None for a path."""
    scheme = remote_scheme(text)
    if scheme is None:
        return None
    return f"remote storage ({scheme}://) is not supported yet; give a local path, got {text}"
