"""Forward batches of exactly one size from samples of any number of clips."""

from __future__ import annotations

import torch


class ClipPacker:
    """Packs the clips of consecutive samples into forward batches of exactly ``batch_size``.

    A sample's clips may span two batches; the last batch is padded by repeating
    its last clip. One input shape for the whole run means the backend tunes once
    (cuDNN's benchmark mode, oneDNN's primitive cache) instead of once per shape,
    and the batches of the forward-only bound are the same as the run's.
    """

    def __init__(self, batch_size: int, *, pin: bool = False) -> None:
        self.batch_size, self.pin = batch_size, pin
        self.video: list[torch.Tensor] = []
        self.spec: list[torch.Tensor] = []
        self.n = 0
        self._staging: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._turn = 0

    def add(self, video: torch.Tensor, spec: torch.Tensor):
        """Queue a sample's clips; yield every full batch as ``(video, spec, n_real)``."""
        i = 0
        while i < video.shape[0]:
            take = min(self.batch_size - self.n, video.shape[0] - i)
            self.video.append(video[i : i + take])
            self.spec.append(spec[i : i + take])
            self.n += take
            i += take
            if self.n == self.batch_size:
                yield self._emit()

    def flush(self):
        """The last, partial batch padded to full size, if any clips are left."""
        if self.n:
            pad = self.batch_size - self.n
            self.video.append(self.video[-1][-1:].expand(pad, *self.video[-1].shape[1:]))
            self.spec.append(self.spec[-1][-1:].expand(pad, *self.spec[-1].shape[1:]))
            yield self._emit(real=self.batch_size - pad)

    def _emit(self, real: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        video, spec = self._out(self.video[0], self.spec[0])
        torch.cat(self.video, out=video)
        torch.cat(self.spec, out=spec)
        self.video, self.spec, self.n = [], [], 0
        return video, spec, real or self.batch_size

    def _out(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two staging buffers used in turn: with pinned memory, one batch's copy to the
        device may still run while the next batch is assembled in the other."""
        if not self._staging:
            self._staging = [
                tuple(
                    torch.empty((self.batch_size, *x.shape[1:]), dtype=x.dtype, pin_memory=self.pin)
                    for x in (v, a)
                )
                for _ in range(2)
            ]
        self._turn ^= 1
        return self._staging[self._turn]
