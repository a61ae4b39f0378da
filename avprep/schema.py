"""THE shard format: one versioned module, standard library only.

A shard is a POSIX tar of samples. A sample is every member sharing a key; the
key is the member name up to its first dot, so keys never contain dots.

Schema v2 (what ``avprep shard`` writes): every sample has the same members, so
tools that want one set of columns per sample (Hugging Face ``datasets``'
webdataset loader) read it as one row::

    {key}.json        metadata (see SAMPLE_FIELDS, V2_FIELDS), times in seconds
    {key}.jpgs        every frame's JPEG, concatenated in time order; frame i is the bytes
                      [frame_offsets[i], frame_offsets[i + 1]) of this member
    {key}.spec.npy    float16 log-mel [n_mels, n_columns], numpy.load(allow_pickle=False),
                      stored in Fortran order: the columns of a time window are one
                      contiguous byte range (a reader can read just them)
    {key}.flac        optional mono waveform of [start_s, end_s) at sample_rate (every
                      sample of a run has one, or none does)

Its json has one type per field in every sample (no null that is a string in another
sample, no object whose keys vary): ``label`` is a string (``""``: none), and the
free-form parts are JSON text, ``media_json`` (the source's media facts) and
``extra_json`` (a manifest's extra columns). ``check_sample`` parses them back into
``media`` and ``extra``, so readers see the same metadata whichever version they read.

Schema v1 (still read): ``{key}.f000.jpg``, ``{key}.f001.jpg``, ... one member per
frame, ``spec.npy`` in C order, ``label`` null or a string, ``media`` and ``extra``
objects. Its samples have as many members as frames, so column-wise readers see
samples of different lengths as different tables.

Timeline: every time is in seconds on the source's presentation timeline, where
0 is the start of the chosen video stream. Frame i was displayed at
``frame_times[i]``; spectrogram column j covers the audio from
``spec_start_s + j * hop_s`` for ``win_s`` seconds. A clip window that runs past the
stored columns is padded with ``spec_min`` (v2; the array's minimum in v1).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import operator
import re
import tarfile
from typing import NamedTuple

SCHEMA_VERSION = 2  # what avprep shard writes
READ_VERSIONS = (1, 2)  # what readers accept

JSON = "json"
SPEC = "spec.npy"
FLAC = "flac"
FRAMES = "jpgs"  # v2: the frames' JPEGs, concatenated (an extension no reader decodes as one image)
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
# Fields a v2 json adds (``check_sample`` adds ``media``, ``extra`` and ``label`` parsed).
V2_FIELDS = ("n_frames", "n_columns", "frame_offsets", "spec_min", "label", "media_json",
             "extra_json")  # fmt: skip
MAX_FRAMES_BYTES = 1 << 34  # a frames member's bound (16 GiB: 1000 frames of 16 MB)
MAX_COLUMNS = 10**7  # a spectrogram's bound (28 hours at 10 ms)
MAX_JSON_TEXT = 1 << 20  # media_json, extra_json
F16_MAX = 65504.0
_NUMBER_TYPES = {int, float}  # exact types: a bool is not a number here

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_KEY = re.compile(r"[A-Za-z0-9_-]+_[0-9]{4,}")  # whole key: fullmatch
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
    if not _KEY.fullmatch(key):
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
    return isinstance(key, str) and len(key) <= MAX_KEY_CHARS and bool(_KEY.fullmatch(key))


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

    ``suffixes``: the member suffixes present (``json``, ``spec.npy``, ``jpgs`` or
    ``f000.jpg``...). Returns the metadata readers use: ``meta`` itself (v1), or for v2 a
    copy with ``media`` and ``extra`` parsed from their JSON text and ``label`` None where
    it is ``""``. Raises SampleError saying what is wrong, prefixed with the key. What a
    member's bytes must hold besides is checked where they are read
    (``check_frames_member``, ``spec_layout``).
    """
    try:
        return _check_sample(key, meta, set(suffixes))
    except SampleError as e:
        raise SampleError(f"sample {shown(key)}: {e}") from None


def _int(meta: dict, name: str, lo: int, hi: int) -> int:
    value = meta.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise SampleError(f"{name} must be an integer in {lo}..{hi}, got {shown(value)}")
    return value


def _check_sample(key: str, meta: object, suffixes: set[str]) -> dict:
    check_key(key)
    if not isinstance(meta, dict):
        raise SampleError(f"json is {type(meta).__name__}, not an object")
    version = meta.get("schema_version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise SampleError(f"schema_version {shown(version)}, not one of {READ_VERSIONS}")
    if meta.get("key") != key:
        raise SampleError(f"json names another key, {shown(meta.get('key'))}")
    for name in ("video_id", "source"):
        if not isinstance(meta.get(name), str):
            raise SampleError(f"{name} must be a string, got {shown(meta.get(name))}")
    segment = meta.get("segment")
    if not isinstance(segment, int) or isinstance(segment, bool) or segment < 0:
        raise SampleError(f"segment must be an integer >= 0, got {shown(segment)}")
    if f"{meta['video_id']}_{segment:04d}" != key:  # the key is make_key(video_id, segment)
        raise SampleError(f"video_id {shown(meta['video_id'])} and segment {segment} do not "
                          "make its key")  # fmt: skip
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
    if not set(map(type, times)) <= _NUMBER_TYPES or not all(map(math.isfinite, times)):
        bad = next(t for t in times if type(t) not in _NUMBER_TYPES or not math.isfinite(t))
        raise SampleError(f"frame_times holds {shown(bad)}, not a finite number")
    if not all(map(operator.le, times, times[1:])):  # C loops: 160 times in a few us
        raise SampleError("frame_times go back in time")
    if version == 2:
        return _check_v2(meta, suffixes)
    missing = [frame_member(i) for i in range(len(times)) if frame_member(i) not in suffixes]
    missing += [m for m in (JSON, SPEC) if m not in suffixes]
    if missing:
        raise SampleError(f"members missing: {', '.join(missing[:3])}")
    return meta


def _check_v2(meta: dict, suffixes: set[str]) -> dict:
    n = len(meta["frame_times"])
    if _int(meta, "n_frames", 1, MAX_FRAMES) != n:
        raise SampleError(f"n_frames {meta['n_frames']} but {n} frame_times")
    _int(meta, "n_columns", 1, MAX_COLUMNS)
    offsets = meta.get("frame_offsets")
    if not isinstance(offsets, list) or len(offsets) != n + 1:
        raise SampleError(f"frame_offsets must be a list of {n + 1} byte offsets (frames + 1)")
    if not set(map(type, offsets)) <= {int}:
        bad = next(o for o in offsets if type(o) is not int)
        raise SampleError(f"frame_offsets holds {shown(bad)}, not a byte offset")
    if offsets[0] != 0 or not all(map(operator.lt, offsets, offsets[1:])):
        raise SampleError("frame_offsets must start at 0 and increase (no empty frame)")
    if offsets[-1] > MAX_FRAMES_BYTES:
        raise SampleError(f"frame_offsets reach {offsets[-1]}, past {MAX_FRAMES_BYTES}")
    pad = _number(meta, "spec_min")
    if abs(pad) > F16_MAX:
        raise SampleError(f"spec_min {pad:g} is outside float16's range")
    out = dict(meta)
    for name in ("media", "extra"):
        text = meta.get(f"{name}_json")
        if not isinstance(text, str) or len(text) > MAX_JSON_TEXT:
            raise SampleError(f"{name}_json must be JSON text of an object, got {shown(text)}")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise SampleError(f"{name}_json must be JSON text of an object, got {shown(text)}")
        out[name] = value
    label = meta.get("label")
    if not isinstance(label, str):
        raise SampleError(f'label must be a string ("": none), got {shown(label)}')
    out["label"] = label or None
    missing = [m for m in (JSON, FRAMES, SPEC) if m not in suffixes]
    if missing:
        raise SampleError(f"members missing: {', '.join(missing)}")
    return out


def readers_meta(meta: dict) -> dict:
    """A sample json (parsed) as readers see it, not checked: for v2, ``media`` and ``extra``
    parsed from their JSON text and ``label`` None where it is ``""``; v1 as it is. For code
    that reads the json of shards it wrote (the manifest's rebuild on resume); shards of
    strangers go through ``check_sample``."""
    if not isinstance(meta, dict) or meta.get("schema_version") != 2:
        return meta
    out = dict(meta)
    for name in ("media", "extra"):
        try:
            value = json.loads(meta.get(f"{name}_json") or "{}")
        except (ValueError, TypeError, RecursionError):
            value = {}
        out[name] = value if isinstance(value, dict) else {}
    out["label"] = meta.get("label") or None
    return out


def check_frames_member(meta: dict, size: int) -> None:
    """SampleError unless a v2 frames member of ``size`` bytes holds exactly the frames
    ``frame_offsets`` (checked by ``check_sample``) points into."""
    if meta["frame_offsets"][-1] != size:
        raise SampleError(
            f"sample {shown(meta['key'])}: frame_offsets end at {meta['frame_offsets'][-1]}, "
            f"the {FRAMES} member has {size} bytes"
        )


def v2_json(meta: dict, frame_sizes: list[int], n_columns: int, spec_min: float) -> dict:
    """The v2 json of a sample: ``meta`` as ``check_sample`` gives it (``media``, ``extra``,
    ``label`` None or a string) with the v2 fields, and one JSON type per field whatever
    the sample (times and rates as floats, text never null), so column-wise readers infer
    one schema from any sample."""
    out = {k: v for k, v in meta.items() if k not in ("media", "extra", "label")}
    offsets = [0]
    for size in frame_sizes:
        offsets.append(offsets[-1] + size)
    spec = dict(meta["spec"])
    if spec.get("f_max_hz") is None and "f_max_hz" in spec:  # None: half the sample rate
        spec["f_max_hz"] = meta["sample_rate"] / 2
    for name in ("hop_s", "win_s", "f_min_hz", "f_max_hz", "power", "log_offset"):
        if isinstance(spec.get(name), int) and not isinstance(spec.get(name), bool):
            spec[name] = float(spec[name])
    out.update(
        schema_version=2,
        start_s=float(meta["start_s"]),
        end_s=float(meta["end_s"]),
        fps=float(meta["fps"]),
        spec_start_s=float(meta["spec_start_s"]),
        frame_times=[float(t) for t in meta["frame_times"]],
        spec=spec,
        n_frames=len(frame_sizes),
        n_columns=int(n_columns),
        frame_offsets=offsets,
        spec_min=float(spec_min),
        label="" if meta.get("label") is None else str(meta["label"]),
        media_json=json.dumps(meta.get("media") or {}, separators=(",", ":"), sort_keys=True),
        extra_json=json.dumps(meta.get("extra") or {}, separators=(",", ":"), sort_keys=True),
    )
    out.setdefault("input_key", "")
    return out


def v1_json(meta: dict) -> dict:
    """The v1 json of a sample whose metadata ``check_sample`` gave (either version)."""
    dropped = ("frame_offsets", "spec_min", "media_json", "extra_json")
    out = {k: v for k, v in meta.items() if k not in dropped}
    out.update(schema_version=1, label=meta.get("label"), media=meta.get("media") or {},
               extra=meta.get("extra") or {})  # fmt: skip
    return out


SPEC_DTYPES = ("<f2", "<f4")
_NPY_MAGIC = b"\x93NUMPY"
NPY_HEADER_MAX = 4096 + 12
_NPY_HEADER = re.compile(
    r"\{'descr': '(<f[24])', 'fortran_order': (True|False), 'shape': \((\d{1,9}), (\d{1,9})\), \} *\n?\Z"
)


class SpecLayout(NamedTuple):
    dtype: str  # "<f2" or "<f4"
    shape: tuple[int, int]  # (n_mels, n_columns)
    offset: int  # where the data starts in the member
    fortran: bool  # column-major: column j is bytes offset + j * n_mels * itemsize, onwards

    @property
    def itemsize(self) -> int:
        return int(self.dtype[-1])


def npy_header_size(head: bytes) -> int:
    """Bytes of a .npy member's header (magic, version, length, dict), from its first 12
    bytes; SampleError if they are not a .npy's."""
    if head[:6] != _NPY_MAGIC or len(head) < 10:
        raise SampleError(f"{SPEC} is not a .npy array")
    if head[6] == 1:
        start, size = 10, int.from_bytes(head[8:10], "little")
    elif head[6] in (2, 3) and len(head) >= 12:
        start, size = 12, int.from_bytes(head[8:12], "little")
    else:
        raise SampleError(f"{SPEC}: unknown .npy version {head[6]}")
    if size > NPY_HEADER_MAX - 12:
        raise SampleError(f"{SPEC}: .npy header of {size} bytes")
    return start + size


def spec_layout(npy: bytes, n_mels: int, *, member_size: int | None = None,
                version: int = 1) -> SpecLayout:  # fmt: skip
    """The layout of a spectrogram member in .npy format, read from its header alone
    (``npy``: the member, or its first ``npy_header_size`` bytes with ``member_size``)
    and checked against the member's size, so a header that claims a huge shape costs
    nothing. v1 wants C order; v2 takes either (writers use Fortran order). Raises
    SampleError."""
    size = len(npy) if member_size is None else member_size
    end = npy_header_size(npy)
    if end > min(len(npy), size):
        raise SampleError(f"{SPEC}: .npy header of {end} bytes in a member of {size}")
    start = 12 if npy[6] != 1 else 10
    text = npy[start:end].decode("latin1")
    m = _NPY_HEADER.match(text)  # what numpy writes: no parser needed (a tenth of the time)
    if m is not None:
        header = {"descr": m[1], "fortran_order": m[2] == "True",
                  "shape": (int(m[3]), int(m[4]))}  # fmt: skip
    else:
        try:
            header = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise SampleError(f"{SPEC}: unreadable .npy header") from e
    if not isinstance(header, dict):
        raise SampleError(f"{SPEC}: unreadable .npy header")
    dtype, shape, order = header.get("descr"), header.get("shape"), header.get("fortran_order")
    orders = (False, True) if version == 2 else (False,)
    if dtype not in SPEC_DTYPES or not isinstance(order, bool) or order not in orders:
        want = "C or Fortran order" if version == 2 else "C order"
        raise SampleError(f"{SPEC}: dtype {shown(dtype)}, not float16/float32 in {want}")
    ok = isinstance(shape, tuple) and len(shape) == 2
    if not ok or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise SampleError(f"{SPEC}: shape {shown(shape)}, not [n_mels, n_columns]")
    if shape[0] != n_mels or shape[1] == 0:
        raise SampleError(f"{SPEC}: shape {shape}, the json says {n_mels} mels")
    need = shape[0] * shape[1] * int(dtype[-1])
    if size - end != need:
        raise SampleError(f"{SPEC}: shape {shape} needs {need} bytes, the member has {size - end}")
    return SpecLayout(dtype, shape, end, order)


def check_spec_columns(meta: dict, layout: SpecLayout) -> None:
    """SampleError unless a v2 sample's spectrogram has the json's ``n_columns``."""
    if meta.get("schema_version") == 2 and layout.shape[1] != meta["n_columns"]:
        raise SampleError(
            f"sample {shown(meta['key'])}: {SPEC} has {layout.shape[1]} columns, the json "
            f"says {meta['n_columns']}"
        )


TAR_BLOCK = 512
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd
MAX_MEMBER_BYTES = 1 << 30  # a sample's member: 60 s of 720p frames is ~0.1 GB


_FRAME_MEMBER = re.compile(rf"f[0-9]{{{FRAME_DIGITS}}}\.jpg")  # v1: f000.jpg ...


def is_sample_member(suffix: str) -> bool:
    """Whether a member suffix (``spec.npy`` of ``{key}.spec.npy``) is one readers of
    either schema version use. Readers leave other members unread: a stranger's extra
    members cost them no memory."""
    return suffix in (JSON, SPEC, FLAC, FRAMES) or bool(_FRAME_MEMBER.fullmatch(suffix))


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a reader must not read a shard's member into memory, or None: a sparse member
    (a few bytes in the shard that expand to gigabytes of zeros when read) or one larger
    than ``MAX_MEMBER_BYTES``. The one rule of every reader of members."""
    if info.issparse() or info.type == tarfile.GNUTYPE_SPARSE:
        return f"member {shown(info.name)} is a sparse file ({info.size} bytes when expanded)"
    if info.size > MAX_MEMBER_BYTES:
        return f"member {shown(info.name)} holds {info.size} bytes, over the {MAX_MEMBER_BYTES} a member may"
    return None


def tar_ends_problem(size: int, head: bytes, tail: bytes) -> str | None:
    """Why a shard of ``size`` bytes whose first block is ``head`` and last two blocks are
    ``tail`` cannot be a readable tar, or None (a compressed tar is judged as it is read).
    The one verdict of the local and the remote shard checks."""
    if head.startswith(COMPRESSED):
        return None
    if size % TAR_BLOCK or size < 3 * TAR_BLOCK:
        return f"not a tar ({size} bytes, not whole {TAR_BLOCK}-byte blocks)"
    if not head.strip(b"\0"):
        return "holds no samples (an empty tar)"
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return "not a tar (no tar header at its start)"
    if tail.strip(b"\0"):
        return "cut short (no end-of-archive marker)"
    return None
