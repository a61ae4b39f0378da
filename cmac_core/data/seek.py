"""Shards -> clips: v2 shards read by seeking, everything else as a webdataset stream.

Training uses a few frames and columns of each sample. An uncompressed shard whose first
sample is schema v2 is read with ``pread``: each member's tar header, the sample's
json, the spectrogram's .npy header, and then only the byte ranges of the chosen clip's
frames (one range: a clip's frames are consecutive in the frames member) and of its
spectrogram columns (one range: the member is stored column-major). The rest of the
sample is skipped over, never read. A local shard is read with ``os.pread``
(``ranges.CountingFile``); a shard in an object store (``s3://``, any fsspec protocol
webdataset has no opener of its own for) with ranged GETs (``avprep.remote_read.RangedFile``:
a small read fetches 64 KiB, so a header and the json after it come in one request).
Shards written as v1, compressed tars and other URLs (``http://``, ``pipe:``) are read
whole, as before (webdataset's tar stream, then ``SafeDecode``).

Both ways give the same clips for the same seed: samples reach ``ClipWindow`` in shard
order and it draws the same windows from the same generator (``clip_frames``, the audio
window, the sync shift). Damage is what the stream finds, with two differences that only
damaged shards see: a v2 sample's non-finite spectrogram values are found in the columns
read (the stream checks the whole array first), and a v2 frames member's JPEGs are
decoded only for the frames a clip uses (as in the stream).

``clips_per_sample`` (``data.clips_per_sample``) draws that many windows from each sample
read, each from the generator in turn; the stream path does the same.
"""

from __future__ import annotations

import json
import re
import tarfile

from webdataset.tariterators import base_plus_ext

from avprep import schema
from avprep.remote_read import RangedFile, ShardReadError
from avprep.schema import SampleError
from cmac_core.data.damage import (
    SAMPLE,
    SHARD,
    SchemaVersionError,
    ShardSamples,
    UnsafeShardError,
    decode_or_marker,
    is_marker,
    marker,
)
from cmac_core.data.ranges import CountingFile, FileFrames, FileSpec
from cmac_core.data.shards import COMPRESSED, _checked_remotely, _is_url
from cmac_core.data.stages import SafeDecode, check_members, parse_json

JSON_MAX = 1 << 22  # a sample json's bound (4 MiB; avprep writes a few KB)
NPY_HEAD = 128  # np.save's header of a 2-D array: read in one go
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped alike


class ShardClips:
    """Pipeline stage: ``{"url"}`` dicts -> clips (``window``'s dicts) and damage markers
    (``cmac_core.data.damage``), ``clips_per_sample`` clips per sample read.

    ``seek``: read v2 shards on disk and in object stores by seeking (False: every shard
    as a stream, as v1). ``bytes_read`` and ``samples_seeked``: what this process's seeking
    read so far (``requests``: the ranged GETs of remote shards among it)."""

    def __init__(self, window, *, clips_per_sample: int = 1, seek: bool = True) -> None:
        self.window, self.k, self.seek = window, clips_per_sample, seek
        self.decode = SafeDecode()
        self.bytes_read = 0
        self.samples_seeked = 0
        self.requests = 0

    def __call__(self, src):
        for shard in src:
            url = shard["url"]
            if self.seek and (not _is_url(url) or _checked_remotely(url)):
                yield from self._seek(shard)
            else:
                yield from self._stream(shard)

    # -- the stream: v1, URLs, compressed tars --------------------------------------------
    def _stream(self, shard: dict):
        for raw in ShardSamples()(iter([shard])):
            s = decode_or_marker(raw, self.decode)
            if is_marker(s):
                yield s
            else:
                yield from self._clips(s, raw.get("__url__", shard["url"]), raw["__key__"])

    def _clips(self, s: dict, url: str, key: str):
        for _ in range(self.k):
            try:
                clip = self.window(s)
            except (UnsafeShardError, SchemaVersionError, ShardReadError):
                raise
            except Exception as e:  # values out of range, a member cut short: one marker
                yield marker(url, e, kind=SAMPLE, key=key)
                return
            yield clip

    # -- seeking: v2 shards on disk and in object stores ----------------------------------
    def _seek(self, shard: dict):
        url = shard["url"]
        try:
            f = RangedFile(url) if _is_url(url) else CountingFile(url)
        except OSError as e:
            yield marker(url, e, kind=SHARD)
            return
        try:
            head = f.pread(min(6, f.size), 0) if f.size else b""
            if head.startswith(COMPRESSED):  # webdataset's stream decompresses it
                yield from self._stream(shard)
            else:
                yield from self._walk(shard, f)
        except ShardReadError as e:  # the store failed for good: the rest of the shard
            yield marker(url, e, kind=SHARD)
        finally:
            self.bytes_read += f.bytes_read
            self.requests += getattr(f, "requests", 0)
            f.close()

    def _walk(self, shard: dict, f: CountingFile | RangedFile):
        url, n, first = shard["url"], 0, True
        key, group = None, {}
        members = tar_members(f)
        while True:
            try:
                m = next(members, None)
            except Exception as e:  # a header cut short or damaged
                yield marker(url, e, kind=SHARD)
                return
            if m is not None and (not m[3] or _skipped(m[0])):
                continue
            k, suffix = base_plus_ext(m[0]) if m is not None else (None, None)
            if m is not None and k is None:
                continue
            if (m is None or k != key) and group:
                if first:
                    first = False
                    if not _is_v2(f, group):
                        yield from self._stream(shard)  # a v1 shard: read as it always was
                        return
                n += 1
                yield from self._sample(f, url, key, group)
            if m is None:
                break
            if k != key:
                key, group = k, {}
            suffix = suffix.lower()
            if suffix in group:
                yield marker(url, f"{m[0]}: duplicate file name in tar file {suffix}", kind=SHARD)
                return
            group[suffix] = (m[1], m[2])
        if n == 0:
            yield marker(url, "holds no samples (an empty tar)", kind=SHARD)

    def _sample(self, f: CountingFile, url: str, key: str, group: dict):
        """The clips of one sample (or its marker), reading what they need."""
        try:
            check_members(key, url, group)
            schema.check_key(key)
            if schema.JSON not in group:
                raise SampleError(f"sample {key}: no json member")
            meta = parse_json(key, url, _read(f, key, group[schema.JSON], JSON_MAX))
            if meta["schema_version"] != 2:  # one v1 sample in a v2 shard: read it whole
                raw = {"__key__": key, "__url__": url}
                raw.update((suffix, f.pread(size, off)) for suffix, (off, size) in group.items())
                s = self.decode(raw)
            else:
                s = self._lazy(f, key, meta, group)
                self.samples_seeked += 1
        except (UnsafeShardError, SchemaVersionError, ShardReadError):
            raise
        except Exception as e:
            yield marker(url, e, kind=SAMPLE, key=key)
            return
        yield from self._clips(s, url, key)

    def _lazy(self, f: CountingFile, key: str, meta: dict, group: dict) -> dict:
        """A v2 sample whose frames and spectrogram columns are read when the window asks."""
        meta = schema.check_sample(key, meta, group)
        frames_at, frames_size = group[schema.FRAMES]
        schema.check_frames_member(meta, frames_size)
        spec_at, spec_size = group[schema.SPEC]
        head = f.pread(min(spec_size, NPY_HEAD), spec_at)
        try:
            need = schema.npy_header_size(head)
            if need > len(head):
                head = f.pread(min(spec_size, need), spec_at)
            layout = schema.spec_layout(head, meta["spec"]["n_mels"], member_size=spec_size,
                                        version=2)  # fmt: skip
            schema.check_spec_columns(meta, layout)
        except SampleError as e:
            raise SampleError(f"sample {key}: {e}") from None
        return {"key": key, "meta": meta, "jpegs": FileFrames(f, frames_at, meta["frame_offsets"]),
                "spec": FileSpec(f, key, spec_at, layout)}  # fmt: skip


BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)


def tar_members(f: CountingFile):
    """``(name, data offset, size, is a regular file)`` of each member of the tar ``f``, read
    from its 512-byte header alone (member data is never read here). Plain ustar headers
    of regular files (what avprep writes) are parsed here; anything else (pax and GNU
    long-name headers, links, base-256 sizes) by Python's tarfile. Raises
    tarfile.ReadError for a damaged header or a member that runs past the end of the file.
    """
    pos = 0
    while True:
        if pos + BLOCK > f.size:
            if pos < f.size:
                raise tarfile.ReadError(f"unexpected end of data at byte {pos}")
            return  # no end-of-archive marker: check_shard reports that before reading
        buf = f.pread(BLOCK, pos)
        if buf == ZERO_BLOCK:
            return  # end of archive (tarfile stops at the first zero block too)
        if _plain(buf):
            name = buf[:100].split(b"\0", 1)[0]
            prefix = buf[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
            size = int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            m = (name.decode("utf-8", "surrogateescape"), pos + BLOCK, size, True)
            pos = pos + BLOCK + -(-size // BLOCK) * BLOCK
        else:
            f.seek(pos)
            try:
                info = tarfile.TarFile(fileobj=f, mode="r").firstmember
            except tarfile.HeaderError as e:
                raise tarfile.ReadError(f"damaged tar header at byte {pos}: {e}") from None
            if info is None:
                raise tarfile.ReadError(f"damaged tar header at byte {pos}")
            if info.issparse() or info.type == tarfile.GNUTYPE_SPARSE:
                raise tarfile.ReadError(schema.member_problem(info))
            data_blocks = -(-info.size // BLOCK) * BLOCK if info.isreg() else 0
            m = (info.name, info.offset_data, info.size, info.isreg())
            pos = info.offset_data + data_blocks
        if m[3] and m[1] + m[2] > f.size:
            raise tarfile.ReadError(f"unexpected end of data: {schema.shown(m[0])} runs past "
                                    f"the end of the file")  # fmt: skip
        yield m


def _plain(buf: bytes) -> bool:
    """Whether a header block is a plain ustar/GNU header of a regular file with an octal
    size and a valid checksum."""
    if buf[156:157] not in (b"0", b"\0") or buf[257:262] != b"ustar" or buf[124] & 0x80:
        return False
    try:
        want = int(buf[148:156].split(b"\0", 1)[0].strip() or b"x", 8)
        int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return False
    return want == 256 + sum(buf[:148]) + sum(buf[156:])


def _skipped(name: str) -> bool:
    return ("/" not in name and name.startswith("__") and name.endswith("__")) or bool(
        _SKIP_META.match(name)
    )


def _read(f: CountingFile, key: str, where: tuple[int, int], limit: int) -> bytes:
    offset, size = where
    if size > limit:
        raise SampleError(f"sample {key}: json of {size} bytes (more than {limit})")
    return f.pread(size, offset)


def _is_v2(f: CountingFile, group: dict) -> bool:
    """Whether a shard's first sample says it is schema v2 (its json alone is read)."""
    where = group.get(schema.JSON)
    if where is None or where[1] > JSON_MAX:
        return False
    try:
        meta = json.loads(f.pread(where[1], where[0]))
    except (ValueError, RecursionError, SampleError):
        return False
    return isinstance(meta, dict) and meta.get("schema_version") == 2
