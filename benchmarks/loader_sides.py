"""bench_loader's datasets besides the training loader itself: ``ReaderOnly`` (the loader's
pipeline without Augment), ``DecodeOnly`` (the bound: a clip's work with no reading) and
``FromSource`` (AVID-style, every clip decoded from its source video and audio)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from avprep.read_sample import decode_jpegs, frame_jpegs, sample_meta, spec_array
from avprep.schema import make_key
from cmac_core.config import DataConfig
from cmac_core.data.clip import Window, choose_window, cut_columns, frame_indices
from cmac_core.data.loader import train_pipeline
from cmac_core.data.shards import SharedEpoch, worker_coords
from cmac_core.data.stages import Augment

FPS = 16.0  # avprep shard's default, and the clip rate of the from-source side
SHORT_SIDE = 128
SAMPLE_RATE = 16000
# What Augment reads of a from-source clip: a sample key (it hashes the video id) and the
# spectrogram preset (it normalises by it); this side makes logmel128's
SOURCE_META = {"spec": {"preset": "logmel128"}}


class ReaderOnly(IterableDataset):
    """The training pipeline up to decoded frames, without Augment; the decoded clips stay
    in the worker, which yields per batch the list of ``{"key", "jpeg_bytes", "spec_bytes"}``."""

    def __init__(self, urls: list[str], cfg: DataConfig, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.urls, self.cfg, self.batch_size, self.seed = urls, cfg, batch_size, seed

    def __iter__(self):
        pipe = train_pipeline(self.urls, self.cfg, batch_size=self.batch_size, rank=0,
                              world_size=1, epoch=SharedEpoch(0), seed=self.seed)  # fmt: skip
        pipe.pipeline = pipe.pipeline[:-1]  # no Augment: the batch is the list of clips
        pipe.pipeline.insert(2, _sizes)
        for batch in pipe:
            yield [{"key": c["key"], "jpeg_bytes": c["jpeg_bytes"], "spec_bytes": c["spec"].nbytes}
                   for c in batch]  # fmt: skip


def _sizes(src):
    """Records each clip's JPEG bytes before DecodeFrames drops them."""
    for c in src:
        if "jpegs" in c:
            c["jpeg_bytes"] = sum(len(j) for j in c["jpegs"])
        yield c


class DecodeOnly(IterableDataset):
    """The bound: a clip's work with no reading. Each worker first loads its shards' samples
    into memory (each frame's JPEG bytes, the spectrogram); then per clip it draws a window
    (as ``ClipWindow``), decodes the window's JPEGs (``read_sample.decode_jpegs``, as the
    loader does) and copies its
    spectrogram columns. Yields, per ``batch_size`` clips, the list of their keys (the
    decoded arrays are dropped in the worker), or with ``augment`` (a DataConfig) the
    batch the loader's own ``Augment`` makes of them."""

    def __init__(self, urls: list[str], *, clip_frames: int, batch_size: int, seed: int,
                 augment: DataConfig | None = None) -> None:  # fmt: skip
        super().__init__()
        self.urls, self.clip_frames, self.batch_size = urls, clip_frames, batch_size
        self.seed, self.augment = seed, augment

    def __iter__(self):
        worker, n_workers = worker_coords()
        mine = self.urls[worker::n_workers] or self.urls
        samples = []
        for sample in wds.tarfile_to_samples()({"url": u} for u in mine):
            meta = sample_meta(sample)
            samples.append((meta, frame_jpegs(sample, meta), np.array(spec_array(sample, meta))))
        rng = np.random.default_rng([self.seed, worker])
        augment = None
        if self.augment is not None:
            augment = Augment(self.augment, seed=self.seed, rank=0, epoch=None)  # the loader's
        batch = []
        while True:
            meta, jpegs, spec = samples[int(rng.integers(len(samples)))]
            w = choose_window(meta, self.clip_frames, rng)
            idx = frame_indices(w, len(jpegs))
            frames = decode_jpegs(meta["key"], [jpegs[i] for i in idx])  # as the loader does
            cols = cut_columns(spec, w, meta["spec_min"])
            if augment is None:
                del frames, cols
                batch.append(meta["key"])
            else:
                batch.append({"key": meta["key"], "meta": meta, "window": w, "frames": frames,
                              "spec": cols})  # fmt: skip
            if len(batch) == self.batch_size:
                yield batch if augment is None else augment(batch)
                batch = []


class FromSource(IterableDataset):
    """AVID-style: every clip decoded from its source video (decord) and audio (ffmpeg)."""

    def __init__(self, videos: list[dict], cfg: DataConfig, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.videos, self.cfg, self.batch_size, self.seed = videos, cfg, batch_size, seed
        self.clip_s = cfg.clip_frames / FPS
        self.win, self.hop = round(0.025 * SAMPLE_RATE), round(0.010 * SAMPLE_RATE)
        n_columns = round(self.clip_s / 0.010)  # the loader's column count for a clip
        self.n_samples = (n_columns - 1) * self.hop + self.win

    def __iter__(self):
        import decord  # noqa: PLC0415
        import torchaudio  # noqa: PLC0415

        decord.logging.set_level(decord.logging.QUIET)
        worker, _ = worker_coords()
        rng = np.random.default_rng([self.seed, worker])
        augment = Augment(self.cfg, seed=self.seed, rank=0, epoch=None)  # the loader's own
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.win, win_length=self.win, hop_length=self.hop,
            n_mels=128, power=2.0, center=False, norm="slaney", mel_scale="slaney",
        )  # fmt: skip
        batch = []
        while True:
            v = self.videos[int(rng.integers(len(self.videos)))]
            start_s = float(rng.uniform(0, v["duration_s"] - self.clip_s - 0.1))
            frames = self.frames(v, start_s, decord)
            with torch.no_grad():
                spec = torch.log(mel(torch.from_numpy(self.audio(v, start_s))) + 1e-6).numpy()
            window = Window(0, len(frames), 0, spec.shape[1], start_s, self.clip_s)
            batch.append({"key": make_key(Path(v["path"]).stem, 0), "meta": SOURCE_META, "frames": frames,
                          "spec": spec, "window": window})  # fmt: skip
            if len(batch) == self.batch_size:
                yield augment(batch)
                batch = []

    def frames(self, v: dict, start_s: float, decord) -> np.ndarray:
        """``[clip_frames, 128, W, 3]`` uint8: the frames on display at start_s + i / 16."""
        w, h = v["width"], v["height"]
        size = (round(w * SHORT_SIDE / h), SHORT_SIDE) if w >= h else (SHORT_SIDE, round(h * SHORT_SIDE / w))  # fmt: skip
        vr = decord.VideoReader(v["path"], width=size[0], height=size[1], num_threads=1)
        times = start_s + np.arange(self.cfg.clip_frames) / FPS
        idx = np.minimum(np.floor(times * v["fps"] + 1e-6).astype(int), len(vr) - 1)
        return vr.get_batch(idx.tolist()).asnumpy()

    def audio(self, v: dict, start_s: float) -> np.ndarray:
        """The clip's audio, mono float32 at 16 kHz, ``n_samples`` long (zero-padded)."""
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-ss", f"{start_s:.6f}",
               "-i", v["path"], "-t", f"{self.n_samples / SAMPLE_RATE:.6f}", "-vn", "-ac", "1",
               "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"]  # fmt: skip
        wave = np.frombuffer(
            subprocess.run(cmd, capture_output=True, check=True).stdout, np.float32
        )
        out = np.zeros(self.n_samples, np.float32)
        out[: min(len(wave), self.n_samples)] = wave[: self.n_samples]
        return out
