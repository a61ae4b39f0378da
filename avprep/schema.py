"""THE shard format: one versioned module, standard library only.

A shard is a POSIX tar of samples. A sample is every member sharing a key; the
key is the member name up to its first dot, so keys never contain dots.

Schema v1 members of sample ``key``::

    {key}.json        metadata (see SAMPLE_FIELDS), times in seconds
    {key}.f000.jpg    frame 0 in display orientation, f001.jpg, ... in time order
    {key}.spec.npy    float16 log-mel [n_mels, n_columns], numpy.load(allow_pickle=False)
    {key}.flac        optional mono waveform of [start_s, end_s) at sample_rate

Timeline: every time is in seconds on the source's presentation timeline, where
0 is the start of the chosen video stream. Frame i was displayed at
``frame_times[i]``; spectrogram column j covers the audio from
``spec_start_s + j * hop_s`` for ``win_s`` seconds.
"""

from __future__ import annotations

import hashlib
import re

SCHEMA_VERSION = 1

JSON = "json"
SPEC = "spec.npy"
FLAC = "flac"
FRAME_DIGITS = 3
MAX_FRAMES = 10**FRAME_DIGITS

SHARD_PREFIX = "shard"
SHARD_SUFFIX = ".tar"
TMP_SUFFIX = ".tmp"
MANIFEST_DIR = "manifest"

# Fields every sample json carries (extras such as label and manifest columns may follow).
SAMPLE_FIELDS = (
    "schema_version",
    "key",
    "video_id",
    "source",
    "segment",
    "start_s",
    "end_s",
    "frame_times",
    "fps",
    "sample_rate",
    "spec",
    "spec_start_s",
    "media",
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_KEY = re.compile(r"^[A-Za-z0-9_-]+_[0-9]{4,}$")
MAX_ID_CHARS = 96


def frame_member(index: int) -> str:
    """Member suffix of frame ``index``: ``f000.jpg``."""
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(f"frame index {index} outside 0..{MAX_FRAMES - 1}")
    return f"f{index:0{FRAME_DIGITS}d}.jpg"


def is_frame_member(suffix: str) -> bool:
    return len(suffix) == FRAME_DIGITS + 5 and suffix[0] == "f" and suffix.endswith(".jpg")


def make_key(video_id: str, segment: int) -> str:
    """Sample key ``{video_id}_{segment:04d}``: no dots, unique per segment."""
    if not video_id or _UNSAFE.search(video_id):
        raise ValueError(f"unsafe video id {video_id!r}: use safe_id()")
    if segment < 0:
        raise ValueError(f"segment must be >= 0, got {segment}")
    return f"{video_id}_{segment:04d}"


def split_key(key: str) -> tuple[str, int]:
    """Inverse of make_key: ``(video_id, segment)``."""
    if not _KEY.match(key):
        raise ValueError(f"not a sample key: {key!r}")
    video_id, segment = key.rsplit("_", 1)
    return video_id, int(segment)


def safe_id(text: str) -> str:
    """A readable id made of ``[A-Za-z0-9_-]``; characters outside it become ``_``.

    Lossy (two texts can map to one id): callers that need uniqueness add
    ``short_hash`` of the original text, as ``discover`` does for collisions.
    """
    out = _UNSAFE.sub("_", text).strip("_") or "video"
    return out[:MAX_ID_CHARS]


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def shard_stem(rank: int, run: int, worker: int, seq: int) -> str:
    """Shard name without suffix; the same stem names its manifest part."""
    return f"{SHARD_PREFIX}-r{rank:04d}-{run:03d}-w{worker:02d}-{seq:05d}"


_STEM = re.compile(r"^shard-r(\d{4,})-(\d{3,})-w(\d{2,})-(\d{5,})$")


def parse_shard_stem(stem: str) -> tuple[int, int, int, int] | None:
    """``(rank, run, worker, seq)`` of a shard stem, or None if it is not one."""
    m = _STEM.match(stem)
    return tuple(int(g) for g in m.groups()) if m else None  # type: ignore[return-value]
