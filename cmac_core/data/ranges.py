"""A v2 sample's frames and spectrogram as sequences read on demand.

``ClipWindow`` takes the frames and spectrogram columns of one clip from a sample; what it
is handed decides what is read: ``MemFrames`` slices a frames member already in memory
(the webdataset stream), ``FileFrames`` and ``FileSpec`` read just the byte ranges of the
clip from the shard file (``cmac_core.data.seek``). All give the same bytes and values.
"""

from __future__ import annotations

import os

import numpy as np

from avprep import schema
from avprep.read_sample import spec_values
from avprep.schema import SampleError


class CountingFile:
    """A local file read with ``pread`` and plain ``read`` (for tarfile's headers), unbuffered,
    counting the bytes it returns (``bytes_read``): what a clip costs the storage."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.pos = 0
        self.bytes_read = 0

    # the part of a file object tarfile uses
    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = max(0, self.size - self.pos)
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        self.bytes_read += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = pos
        elif whence == 1:
            self.pos += pos
        else:
            self.pos = self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def pread(self, n: int, offset: int) -> bytes:
        """Exactly ``n`` bytes at ``offset``; SampleError when the file ends first."""
        data = os.pread(self.fd, n, offset)
        self.bytes_read += len(data)
        if len(data) != n:
            raise SampleError(f"a member runs past the end of the shard ({offset + n} bytes)")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemFrames:
    """Frame i of a v2 frames member in memory: ``buf[offsets[i]:offsets[i + 1]]`` (bytes,
    copied only when asked for)."""

    def __init__(self, buf: bytes, offsets: list[int]) -> None:
        self.buf, self.offsets = memoryview(buf), offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return bytes(self.buf[self.offsets[i] : self.offsets[i + 1]])

    def take(self, idx: list[int]) -> list[bytes]:
        return [self[i] for i in idx]


class FileFrames(MemFrames):
    """Frame i of a v2 frames member in a shard file at ``base``; ``take`` reads the frames
    asked for as one byte range."""

    def __init__(self, file: CountingFile, base: int, offsets: list[int]) -> None:
        self.file, self.base, self.offsets = file, base, offsets

    def __getitem__(self, i: int) -> bytes:
        return self.take([i])[0]

    def take(self, idx: list[int]) -> list[bytes]:
        if not idx:
            return []
        lo, hi = min(idx), max(idx)
        if lo < 0 or hi >= len(self):
            raise IndexError(hi)
        start = self.offsets[lo]
        data = memoryview(self.file.pread(self.offsets[hi + 1] - start, self.base + start))
        return [bytes(data[self.offsets[i] - start : self.offsets[i + 1] - start]) for i in idx]


class FileSpec:
    """A v2 spectrogram member in a shard file, ``[n_mels, n_columns]``: ``spec[:, lo:hi]``
    reads just those columns (one byte range in Fortran order; a C-ordered member is read
    whole, once). Values read are checked finite. It has no ``min()``: a window past the
    edge is padded with the json's ``spec_min``."""

    def __init__(self, file: CountingFile, key: str, base: int, layout: schema.SpecLayout) -> None:
        self.file, self.key, self.base, self.layout = file, key, base, layout
        self.shape, self.dtype = layout.shape, np.dtype(layout.dtype)
        self._whole: np.ndarray | None = None

    def __getitem__(self, index) -> np.ndarray:
        rows, cols = index
        if rows != slice(None) or not isinstance(cols, slice) or cols.step not in (None, 1):
            raise TypeError("FileSpec supports spec[:, lo:hi] only")
        lo, hi, _ = cols.indices(self.shape[1])
        hi = max(lo, hi)
        n_mels, lay = self.shape[0], self.layout
        if not lay.fortran:
            if self._whole is None:
                n = n_mels * self.shape[1] * lay.itemsize
                data = self.file.pread(n, self.base + lay.offset)
                self._whole = self._finite(np.frombuffer(data, lay.dtype).reshape(self.shape))
            return self._whole[:, lo:hi]
        col = n_mels * lay.itemsize
        data = self.file.pread((hi - lo) * col, self.base + lay.offset + lo * col)
        return self._finite(np.frombuffer(data, lay.dtype).reshape((n_mels, hi - lo), order="F"))

    def _finite(self, a: np.ndarray) -> np.ndarray:
        return spec_values(self.key, a)


def take(jpegs, idx: list[int]) -> list:
    """The frames ``idx`` of a sample's frame sequence (a list, ``MemFrames`` or
    ``FileFrames``), read together where they are read from a file."""
    if hasattr(jpegs, "take"):
        return jpegs.take(idx)
    return [jpegs[i] for i in idx]
