"""Whether a path a user gave is a URL, and where URLs are taken.

``avprep shard`` reads inputs from URLs and writes ``--out`` to a URL (``avprep.remote``,
any fsspec protocol whose package is installed). Everywhere else a URL is still refused
in one line: pathlib would turn ``s3://b/x`` into the local folder ``s3:/b/x``.
"""

from __future__ import annotations

import re
from pathlib import Path

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
READ_ONLY = ("http", "https")  # no object is ever written over plain HTTP


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


def out_refusal(text: str | Path) -> str | None:
    """The one-line refusal for an ``avprep shard --out`` that cannot be written (a URL of
    a read-only protocol), None for a local path or a writable URL."""
    scheme = remote_scheme(text)
    if scheme not in READ_ONLY:
        return None
    from avprep.remote import scrub  # noqa: PLC0415

    return (f"--out cannot be an {scheme}:// URL (read only); give a local folder or a URL "
            f"of a store (s3://, gs://, ...), got {scrub(str(text))}")  # fmt: skip


def path_or_url(text: str | Path) -> str | Path:
    """``avprep shard``'s INPUTS: a URL stays text, a path becomes a Path."""
    if isinstance(text, Path) or remote_scheme(text):
        return text
    return Path(text)


def out_path_or_url(text: str | Path) -> str | Path:
    """``avprep shard --out``: a local folder, or a URL of a store written through fsspec."""
    message = None if isinstance(text, Path) else out_refusal(text)
    if message is not None:
        import typer  # noqa: PLC0415

        raise typer.BadParameter(message)
    return path_or_url(text)
