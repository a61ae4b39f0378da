"""One call from a shard sample to arrays, for readers outside cmac_core; and the members
of a sample in either schema version (the writer's and ``convert_shard``'s).

With plain webdataset (any schema version, decoded or not)::

    import webdataset as wds
    from avprep.read_sample import decode_sample
    for sample in wds.WebDataset("shards/shard-r0000-000-w00-{00000..00003}.tar"):
        frames, spec, meta = decode_sample(sample)   # uint8 [T, H, W, 3], float32 [n_mels, n_columns], dict

``decode_sample`` also takes a row of ``datasets.load_dataset("webdataset", ...)`` (v2
shards). Everything is checked against the format first (``avprep.schema``); a sample that
breaks it raises ``schema.SampleError`` with a one-line message.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from avprep import schema
from avprep.schema import SampleError


def decode_sample(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict]:
    """A sample as webdataset yields it (``{"__key__", "json", "jpgs" or "f000.jpg"...,
    "spec.npy"}``; members as bytes, or already decoded by ``.decode()``), or a row of
    Hugging Face ``datasets``' webdataset loader -> ``(frames, spec, meta)``:

    - ``frames``: uint8 ``[T, H, W, 3]`` RGB, frame i shown at ``meta["frame_times"][i]``;
    - ``spec``: float32 ``[n_mels, n_columns]`` log-mel, column j from
      ``meta["spec_start_s"] + j * meta["spec"]["hop_s"]``;
    - ``meta``: the sample's json as ``schema.check_sample`` gives it (``media``, ``extra``
      objects and ``label`` None or a string, in either version).

    Raises SampleError for a sample that breaks the format or a frame that does not decode.
    """
    meta = sample_meta(sample)
    frames = decode_jpegs(meta["key"], frame_jpegs(sample, meta))
    return frames, spec_array(sample, meta).astype(np.float32), meta


def sample_meta(sample: dict[str, Any]) -> dict:
    """The checked metadata of a webdataset sample (``decode_sample``'s third value)."""
    raw = sample.get(schema.JSON)
    key = sample.get("__key__")
    if raw is None:
        raise SampleError(f"sample {schema.shown(key)}: no json member")
    if isinstance(raw, dict):
        meta = raw
    else:
        try:
            meta = json.loads(raw)
        except (ValueError, TypeError, RecursionError) as e:
            raise SampleError(
                f"sample {schema.shown(key)}: its json does not parse ({type(e).__name__})"
            ) from e
    if key is None and isinstance(meta, dict):
        key = meta.get("key")
    present = [k for k, v in sample.items() if not k.startswith("__") and v is not None]
    return schema.check_sample(key, meta, present)


def frame_jpegs(sample: dict[str, Any], meta: dict) -> list:
    """The JPEG of each frame in time order (bytes; arrays where webdataset decoded them)."""
    n = len(meta["frame_times"])
    if meta["schema_version"] == 1:
        return [sample[schema.frame_member(i)] for i in range(n)]
    buf = sample[schema.FRAMES]
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise SampleError(f"sample {schema.shown(meta['key'])}: {schema.FRAMES} is not bytes")
    schema.check_frames_member(meta, len(buf))
    off = meta["frame_offsets"]
    return [bytes(buf[off[i] : off[i + 1]]) for i in range(n)]


def spec_array(sample: dict[str, Any], meta: dict) -> np.ndarray:
    """The spectrogram ``[n_mels, n_columns]`` (float16 as stored), finite, checked."""
    value = sample[schema.SPEC]
    key, n_mels = meta["key"], meta["spec"]["n_mels"]
    if isinstance(value, (bytes, bytearray, memoryview)):
        spec = npy_array(key, bytes(value), meta)
    else:  # decoded by webdataset (an array) or by datasets (nested lists)
        spec = np.asarray(value)
        if spec.ndim != 2 or spec.shape[0] != n_mels or spec.dtype.kind != "f":
            raise SampleError(f"sample {schema.shown(key)}: {schema.SPEC} is not "
                              f"[{n_mels}, n_columns] floats")  # fmt: skip
        if meta["schema_version"] == 2 and spec.shape[1] != meta["n_columns"]:
            raise SampleError(f"sample {schema.shown(key)}: {schema.SPEC} has "
                              f"{spec.shape[1]} columns, the json says {meta['n_columns']}")  # fmt: skip
        spec_values(key, spec)
    return spec


def npy_array(key: str, npy: bytes, meta: dict) -> np.ndarray:
    """A spectrogram member's bytes -> ``[n_mels, n_columns]``, a view of ``npy`` (Fortran
    ordered for v2 shards), finite, checked against the json."""
    try:
        lay = schema.spec_layout(npy, meta["spec"]["n_mels"], version=meta["schema_version"])
        schema.check_spec_columns(meta, lay)
    except SampleError as e:
        raise SampleError(f"sample {schema.shown(key)}: {e}") from None
    n = lay.shape[0] * lay.shape[1]
    flat = np.frombuffer(npy, dtype=lay.dtype, count=n, offset=lay.offset)
    spec_values(key, flat)
    return flat.reshape(lay.shape, order="F" if lay.fortran else "C")


def spec_values(key: str, a: np.ndarray) -> np.ndarray:
    """``a``, a spectrogram's values, if every one is finite and within float16's range (the
    format's: a float32 member may hold no more), else SampleError. float16 by its exponent
    bits (all ones: inf or NaN), five times faster than ``np.isfinite``'s half floats."""
    if a.dtype == np.float16 and (a.flags.c_contiguous or a.flags.f_contiguous):
        bits = a.ravel(order="K").view(np.uint16)  # contiguous: a view, no copy
        top = 0.0 if not bits.size or int((bits & 0x7C00).max()) != 0x7C00 else math.inf
    else:
        top = float(np.abs(a).max()) if a.size else 0.0  # NaN anywhere: NaN
    if not math.isfinite(top):
        raise SampleError(f"sample {schema.shown(key)}: {schema.SPEC} holds NaN or inf")
    if top > schema.F16_MAX:
        raise SampleError(f"sample {schema.shown(key)}: {schema.SPEC} holds {top:.3g}, beyond "
                          f"float16's range (+-{schema.F16_MAX:g})")  # fmt: skip
    return a


def decode_jpegs(key: str, jpegs: list) -> np.ndarray:
    """JPEG bytes (or arrays already decoded) -> uint8 ``[T, H, W, 3]``; SampleError for a
    corrupt JPEG or frames of different sizes. JPEG bytes are decoded straight into their
    slot of the result, sized from the first one's header: a fresh array per frame and
    the copy into the stack cost more than half the decoding of a 128 px frame."""
    import simplejpeg  # noqa: PLC0415

    try:
        if not jpegs or any(isinstance(j, np.ndarray) for j in jpegs):
            return np.stack([j if isinstance(j, np.ndarray) else
                             simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs])  # fmt: skip
        h, w = simplejpeg.decode_jpeg_header(jpegs[0])[:2]
        out = np.empty((len(jpegs), h, w, 3), np.uint8)
        for i, j in enumerate(jpegs):  # a larger frame: "buffer is too small" (ValueError)
            if simplejpeg.decode_jpeg(j, colorspace="RGB", buffer=out[i]).shape != (h, w, 3):
                raise ValueError(f"frame {i} is not {w}x{h} as frame 0 is")
        return out
    except ValueError as e:  # simplejpeg's errors; frames of other sizes
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise SampleError(f"sample {schema.shown(key)}: a frame does not decode ({first})") from e


# -- writing: a sample's members in either version ----------------------------------------


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def sample_members(meta: dict, jpegs: list[bytes], spec: np.ndarray, flac: bytes | None = None,
                   *, version: int = schema.SCHEMA_VERSION) -> dict[str, bytes]:  # fmt: skip
    """The members of one sample (suffix -> bytes, in the order they go into the tar).

    ``meta``: the json's fields as the writer has them (``label`` None or a string, ``media``
    and ``extra`` objects; version 2's are derived here); ``jpegs``: each frame's JPEG in
    time order; ``spec``: ``[n_mels, n_columns]`` float16."""
    if version == 2:
        doc = schema.v2_json(meta, [len(j) for j in jpegs], spec.shape[1], float(spec.min()))
        members = {schema.JSON: json.dumps(doc, separators=(",", ":")).encode(),
                   schema.FRAMES: b"".join(jpegs), schema.SPEC: encode_npy(np.asfortranarray(spec))}  # fmt: skip
    elif version == 1:
        doc = schema.v1_json(meta)
        members = {schema.JSON: json.dumps(doc, separators=(",", ":")).encode()}
        for i, data in enumerate(jpegs):
            members[schema.frame_member(i)] = data
        members[schema.SPEC] = encode_npy(np.ascontiguousarray(spec))
    else:
        raise ValueError(f"schema version {version}: avprep writes {schema.READ_VERSIONS}")
    if flac is not None:
        members[schema.FLAC] = flac
    return members


def convert_shard(src: str | Path, dst: str | Path, *, version: int = schema.SCHEMA_VERSION) -> int:
    """Rewrite shard ``src`` as ``dst`` in schema ``version`` (v1 shards to v2 for readers
    that want one set of columns, or back): the same JPEG bytes and spectrogram values, no
    video decoded. Returns the samples written; SampleError for a sample that breaks the
    format (nothing is left at ``dst`` then)."""
    from avprep.writer import tar_member  # noqa: PLC0415

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}{schema.TMP_SUFFIX}")
    n = 0
    try:
        with tarfile.open(src) as tar, open(tmp, "wb") as out:
            for key, members in _tar_samples(tar):
                meta = sample_meta({"__key__": key, **members})
                jpegs = frame_jpegs(members, meta)
                spec = spec_array(members, meta)
                for suffix, data in sample_members(meta, jpegs, spec, members.get(schema.FLAC),
                                                   version=version).items():  # fmt: skip
                    out.write(tar_member(f"{key}.{suffix}", data))
                n += 1
            out.write(b"\0" * 1024)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _tar_samples(tar: tarfile.TarFile):
    """``(key, {suffix: bytes})`` of consecutive members sharing a key."""
    key, members = None, {}
    for m in tar:
        if not m.isreg():
            continue
        problem = schema.member_problem(m)
        if problem is not None:
            raise SampleError(problem)
        k, _, suffix = m.name.partition(".")
        if not schema.is_sample_member(suffix):
            continue
        if k != key and members:
            yield key, members
            members = {}
        key = k
        members[suffix] = tar.extractfile(m).read()
    if members:
        yield key, members
