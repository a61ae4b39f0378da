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

import ast
import hashlib
import math
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
MAX_KEY_CHARS = 128  # an id, "_" and the segment number, with room to spare


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


# -- reading samples of strangers' shards: one set of rules for every reader ----------


class SampleError(ValueError):
    """A sample that breaks this format (a damaged or hostile shard); one-line message."""


def shown(text: object, limit: int = 60) -> str:
    """``text`` for a message: quoted, control characters escaped, at most ``limit`` chars."""
    out = repr(text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def is_key(key: object) -> bool:
    """Whether ``key`` is a sample key: ``[A-Za-z0-9_-]`` and ``_NNNN``, bounded, so it is
    safe as a file name (no slash, no dot, no ``..``)."""
    return isinstance(key, str) and len(key) <= MAX_KEY_CHARS and bool(_KEY.match(key))


def check_key(key: object) -> str:
    if not is_key(key):
        raise SampleError(
            f"sample key {shown(key)} is not a valid key (refused: a key names files)"
        )
    return key


def _number(meta: dict, name: str, *, positive: bool = False) -> float:
    value = meta.get(name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise SampleError(f"{name} must be {need}, got {shown(value)}")
    return float(value)


def check_sample(key: str, meta: object, suffixes) -> dict:
    """Check a sample's json (already parsed) and member names against this format.

    ``suffixes``: the member suffixes present (``json``, ``spec.npy``, ``f000.jpg``...).
    Returns ``meta``; raises SampleError saying what is wrong, prefixed with the key.
    """
    try:
        return _check_sample(key, meta, set(suffixes))
    except SampleError as e:
        raise SampleError(f"sample {shown(key)}: {e}") from None


def _check_sample(key: str, meta: object, suffixes: set[str]) -> dict:
    check_key(key)
    if not isinstance(meta, dict):
        raise SampleError(f"json is {type(meta).__name__}, not an object")
    if meta.get("key") != key:
        raise SampleError(f"json names another key, {shown(meta.get('key'))}")
    for name in ("video_id", "source"):
        if not isinstance(meta.get(name), str):
            raise SampleError(f"{name} must be a string, got {shown(meta.get(name))}")
    segment = meta.get("segment")
    if not isinstance(segment, int) or isinstance(segment, bool) or segment < 0:
        raise SampleError(f"segment must be an integer >= 0, got {shown(segment)}")
    start, end = _number(meta, "start_s"), _number(meta, "end_s")
    if end < start:
        raise SampleError(f"end_s {end} is before start_s {start}")
    _number(meta, "fps", positive=True)
    _number(meta, "spec_start_s")
    rate = meta.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise SampleError(f"sample_rate must be an integer > 0, got {shown(rate)}")
    spec = meta.get("spec")
    if not isinstance(spec, dict):
        raise SampleError(f"spec must be an object, got {shown(spec)}")
    _number(spec, "hop_s", positive=True)
    _number(spec, "win_s", positive=True)
    n_mels = spec.get("n_mels")
    if not isinstance(n_mels, int) or isinstance(n_mels, bool) or not 0 < n_mels <= 4096:
        raise SampleError(f"spec.n_mels must be an integer in 1..4096, got {shown(n_mels)}")
    times = meta.get("frame_times")
    if not isinstance(times, list) or not 0 < len(times) <= MAX_FRAMES:
        raise SampleError(f"frame_times must be a list of 1..{MAX_FRAMES} times")
    for t in times:
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            raise SampleError(f"frame_times holds {shown(t)}, not a finite number")
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise SampleError("frame_times go back in time")
    missing = [frame_member(i) for i in range(len(times)) if frame_member(i) not in suffixes]
    missing += [m for m in (JSON, SPEC) if m not in suffixes]
    if missing:
        raise SampleError(f"members missing: {', '.join(missing[:3])}")
    return meta


SPEC_DTYPES = ("<f2", "<f4")
_NPY_MAGIC = b"\x93NUMPY"


def spec_layout(npy: bytes, n_mels: int) -> tuple[str, tuple[int, int], int]:
    """``(dtype, (n_mels, n_columns), data offset)`` of a spectrogram member in .npy format,
    read from its header alone and checked against the bytes that follow, so a header that
    claims a huge shape costs nothing. Raises SampleError."""
    if npy[:6] != _NPY_MAGIC or len(npy) < 10:
        raise SampleError(f"{SPEC} is not a .npy array")
    if npy[6] == 1:
        start, size = 10, int.from_bytes(npy[8:10], "little")
    elif npy[6] in (2, 3) and len(npy) >= 12:
        start, size = 12, int.from_bytes(npy[8:12], "little")
    else:
        raise SampleError(f"{SPEC}: unknown .npy version {npy[6]}")
    if size > 4096 or start + size > len(npy):
        raise SampleError(f"{SPEC}: .npy header of {size} bytes")
    try:
        header = ast.literal_eval(npy[start : start + size].decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise SampleError(f"{SPEC}: unreadable .npy header") from e
    if not isinstance(header, dict):
        raise SampleError(f"{SPEC}: unreadable .npy header")
    dtype, shape = header.get("descr"), header.get("shape")
    if dtype not in SPEC_DTYPES or header.get("fortran_order") is not False:
        raise SampleError(f"{SPEC}: dtype {shown(dtype)}, not float16/float32 in C order")
    ok = isinstance(shape, tuple) and len(shape) == 2
    if not ok or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise SampleError(f"{SPEC}: shape {shown(shape)}, not [n_mels, n_columns]")
    if shape[0] != n_mels or shape[1] == 0:
        raise SampleError(f"{SPEC}: shape {shape}, the json says {n_mels} mels")
    offset = start + size
    need = shape[0] * shape[1] * int(dtype[-1])
    if len(npy) - offset != need:
        raise SampleError(
            f"{SPEC}: shape {shape} needs {need} bytes, the member has {len(npy) - offset}"
        )
    return dtype, shape, offset
