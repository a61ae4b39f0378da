"""Container: one input opened once with PyAV; its packets demuxed once, in file order.

The chosen video and audio streams each get a queue of packets. Whichever side
asks for more (frames for a segment, or that segment's audio) demuxes until its
own queue has a packet; the other side's packets wait in their queue, compressed.
Decoding is single-threaded: the worker processes are the parallelism.

Errors follow the ffmpeg CLI: a packet that fails to decode is recorded in
``error`` and skipped; a demuxing error ends the file there (``error`` says why).

A URL (``s3://``, ``https://``: ``avprep.remote``) is read as it is decoded, through a
seekable file object, never copied whole. A remote read that fails for good (after its
retries) fails the input with that reason, not as a truncated file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import av

from avprep.errors import MediaError
from avprep.media.probe import media_info
from avprep.media.unshown import SKIPPABLE, UnshownSkipper
from avprep.probe import MediaInfo
from avprep.tools import local_url
from avprep.urls import remote_scheme


class RemoteReadError(MediaError):
    """A remote input that could not be read (after retries); ``kind`` as
    ``avprep.remote.classify`` names it."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


def reason(e: Exception) -> str:
    """An FFmpeg error as a manifest reason: its message without the file name."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0][:200]


class Container:
    """``Container(path)``: opened, streams chosen (``info``); frames and audio frames
    come from ``video_frames()`` and ``audio_frames()``. Raises MediaError if the
    file cannot be opened or its chosen video stream decodes no frame."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.error = ""
        self._file = None
        if remote_scheme(path):
            from avprep.remote import RemoteFailure, RemoteFile  # noqa: PLC0415

            try:
                self._file = RemoteFile(path)
            except RemoteFailure as e:
                raise RemoteReadError(e.reason, e.kind) from None
        try:
            # file: so that no protocol (concat:, subfile:, ...) can claim the name
            source = self._file if self._file is not None else local_url(path)
            self._av = av.open(source, metadata_errors="replace")
        except av.FFmpegError as e:
            failure = self._file.failure if self._file is not None else None
            if self._file is not None:
                self._file.close()
            if failure is not None:
                raise RemoteReadError(failure.reason, failure.kind) from None
            raise MediaError(f"decode_error: {reason(e)}") from e
        try:
            info = media_info(path, self._av)
            chosen = [s for s in self._av.streams if s.index in _indices(info)]
            for s in self._av.streams:
                if s not in chosen:
                    s.discard = av.stream.Discard.all  # the demuxer skips their packets
            for s in chosen:
                s.codec_context.thread_count = 1
            self._queues: dict[int, deque] = {s.index: deque() for s in chosen}
            self._packets = self._av.demux(*chosen) if chosen else iter(())
            self._eof = False
            self._video: Iterator | None = None
            self._first = None
            self.skipper: UnshownSkipper | None = None
            if info.video is not None:
                self._video = self._decode(self._av.streams[info.video.index])
                self._first = next(self._video, None)
                if self._first is None:
                    raise MediaError(f"decode_error: {self.error or 'no video frames decoded'}")
                info = media_info(path, self._av, rotation=self._first.rotation)
        except BaseException:
            self.close()
            raise
        self.info: MediaInfo = info

    def time_base(self, index: int):
        """The time base (a Fraction of a second) of stream ``index``'s timestamps."""
        return self._av.streams[index].time_base

    def video_frames(self) -> Iterator[av.VideoFrame]:
        """The chosen video stream's frames in decoding order (its first one included)."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._video or ()

    def skip_unshown(self, shown) -> None:
        """From now on, leave undecoded the non-reference video frames no output time shows
        (``shown(t0, t1)``: whether one lies in [t0, t1] on the video's timeline); see
        ``avprep.media.unshown``. Only for codecs in ``SKIPPABLE``; others decode all."""
        v = self.info.video
        stream = self._av.streams[v.index]
        if stream.codec_context.name in SKIPPABLE:
            self.skipper = UnshownSkipper(stream.codec_context, time_base=float(stream.time_base),
                                          start_s=v.start_s, shown=shown)  # fmt: skip

    def audio_frames(self) -> Iterator[av.AudioFrame]:
        """The chosen audio stream's frames in decoding order."""
        return self._decode(self._av.streams[self.info.audio.index])

    def _pull(self) -> bool:
        """Demux one packet into its stream's queue; False once the file is exhausted."""
        if self._eof:
            return False
        try:
            packet = next(self._packets)
        except StopIteration:
            self._eof = True
            self._remote_failure()
            return False
        except av.FFmpegError as e:
            self.error, self._eof = reason(e), True
            self._remote_failure()
            return False
        self._queues[packet.stream.index].append(packet)
        return True

    def _decode(self, stream) -> Iterator:
        queue, codec = self._queues[stream.index], stream.codec_context
        while True:
            while not queue and self._pull():
                pass
            packet = queue.popleft() if queue else None
            flush = packet is None or packet.size == 0
            if self.skipper is not None and not flush and stream.type == "video":
                self.skipper.before(packet, queue, self._pull)
            try:
                yield from codec.decode(None if flush else packet)
            except av.FFmpegError as e:
                if not isinstance(e, av.error.EOFError):
                    self.error = reason(e)
            if flush:
                return

    def _remote_failure(self) -> None:
        """Raise the remote read's failure, if the data ended because of one."""
        failure = self._file.failure if self._file is not None else None
        if failure is not None:
            raise RemoteReadError(failure.reason, failure.kind)

    def close(self) -> None:
        self._av.close()
        if self._file is not None:
            self._file.close()


def _indices(info: MediaInfo) -> set[int]:
    return {s.index for s in (info.video, info.audio) if s is not None}
