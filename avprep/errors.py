"""Errors with a one-line message for people (the CLI prints them, no traceback)."""

from __future__ import annotations


class AvprepError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class UsageError(AvprepError):
    """Bad arguments, unwritable output, a rank already running: exit 2."""


class MediaError(AvprepError):
    """One input could not be read; recorded as ``failed`` in the manifest.

    ``media``: what probing found (manifest columns, ``duration_s`` included), if it got that far.
    """

    def __init__(self, reason: str, media: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.media = media or {}


class SkipInput(MediaError):
    """One input is skipped by policy (no_audio, no_video, too_short)."""
