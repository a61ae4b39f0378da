"""The synchronization two-alternative forced choice on held-out segments.

For each segment one clip (fixed by ``seed`` and the key) is shown with its aligned
audio and with the same segment's audio shifted by at least ``min_shift_s``, both
inside the stored spectrogram (``data/sync.py``'s rule), centre-cropped as in
evaluation. A model scores both; the clip counts as correct when the aligned audio
scores higher. Chance is 0.5. ``lla`` scores with its sync head (``sync_logits``);
a model without one (cmac, avid) with the cosine of its clip embeddings ``z_v . z_a``.

On ``avprep synth`` segments the truth bounds what any model can score (``decidable``):
the only sound tied to the picture is the sounding object's strikes at its wall bounces.
A pair is decidable when the strikes inside the aligned window and inside the shifted one
fall at different times relative to their window's start; otherwise (neither window holds
a strike, say) the two windows differ by nothing the video shows and the best choice is a
coin. The ceiling is ``(decidable + 0.5 * undecidable) / clips``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds

from avprep import truth
from avprep.schema import SampleError
from cmac_core.data.augment import crop_resize, finish_video, spec_norm, spec_to_tensor
from cmac_core.data.clip import cut_columns, frame_indices
from cmac_core.data.damage import ShardSamples, decode_or_marker, is_marker
from cmac_core.data.shards import resolve
from cmac_core.data.stages import SafeDecode, decode_jpegs
from cmac_core.data.sync import SyncPair, sync_pair
from cmac_core.embed.frozen import Frozen
from cmac_core.models.coattention import sync_logits


@dataclass
class SyncChoice:
    correct: int
    clips: int  # segments scored (too short ones are left out, see ``skipped``)
    skipped: int
    decidable: int | None = None  # pairs the synthetic truth can tell apart (None: no truth)

    @property
    def accuracy(self) -> float:
        return self.correct / self.clips if self.clips else float("nan")

    @property
    def ceiling(self) -> float | None:
        """The best accuracy possible on these pairs (module docstring); None without truth."""
        if self.decidable is None or not self.clips:
            return None
        return (self.decidable + 0.5 * (self.clips - self.decidable)) / self.clips


def strikes_in(onsets_s: list[float], start_s: float, length_s: float) -> list[float]:
    """The strikes in ``[start_s, start_s + length_s)``, relative to ``start_s``."""
    return [t - start_s for t in onsets_s if start_s <= t < start_s + length_s]


def pair_decidable(meta: dict, pair: SyncPair, *, tolerance_s: float) -> bool | None:
    """Whether the aligned and the shifted window hold strikes at different relative times
    (more than ``tolerance_s`` apart, one spectrogram hop); None without synthetic truth."""
    try:
        onsets = truth.truth_of(meta)["onsets_s"]
    except ValueError:
        return None
    hop = float(meta["spec"]["hop_s"])
    spec_start = float(meta["spec_start_s"])
    length = pair.aligned.n_columns * hop
    a = strikes_in(onsets, spec_start + pair.aligned.first_column * hop, length)
    b = strikes_in(onsets, spec_start + pair.shifted.first_column * hop, length)
    return len(a) != len(b) or any(abs(x - y) > tolerance_s for x, y in zip(a, b, strict=True))


def held_out_pair(sample: dict, frozen_cfg, *, min_shift_s: float, seed: int):
    """A decoded sample (``SafeDecode``) -> ``(video [1, 3, T, S, S] uint8, aligned, shifted
    [1, 1, F, N], the SyncPair)``, the same for the same key and seed; SampleError when too
    short."""
    c = frozen_cfg.data
    digest = hashlib.blake2b(sample["key"].encode(), digest_size=8).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest, "little")])
    pair = sync_pair(sample["meta"], sample["spec"].shape[1], c.clip_frames, rng,
                     min_shift_s=min_shift_s, audio_seconds=c.audio_seconds, key=sample["key"])  # fmt: skip
    idx = frame_indices(pair.aligned, len(sample["jpegs"]))
    frames = decode_jpegs(sample["key"], [sample["jpegs"][i] for i in idx])
    video = crop_resize(frames, c.crop_px, None).unsqueeze(0)
    mean, std = spec_norm(c, sample["meta"])
    specs = [spec_to_tensor(cut_columns(sample["spec"], w), None, mean=mean, std=std).unsqueeze(0)
             for w in (pair.aligned, pair.shifted)]  # fmt: skip
    return video, specs[0], specs[1], pair


@torch.no_grad()
def pair_scores(
    frozen: Frozen, video: torch.Tensor, aligned: torch.Tensor, shifted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[B]`` of each audio window for uint8 clips: lla's sync logits, or for other
    models the cosine of the clip's video and audio embeddings."""
    device = next(frozen.model.parameters()).device
    video = finish_video(video.to(device))
    aligned, shifted = aligned.to(device), shifted.to(device)
    if hasattr(frozen.model, "sync_logits"):
        return sync_logits(frozen.model, video, aligned, shifted)
    z_v, z_a, _, _ = frozen.embed(video, aligned)
    _, z_s, _, _ = frozen.embed(video, shifted)
    return (z_v * z_a).sum(-1), (z_v * z_s).sum(-1)


def sync_2afc(
    frozen: Frozen, shards: str | list[str], *, min_shift_s: float = 0.5, seed: int = 0,
    limit: int | None = None,
) -> SyncChoice:  # fmt: skip
    """The 2AFC over the segments of ``shards`` (the first ``limit``); damaged samples and
    segments too short for a shifted window are left out (``skipped``)."""
    correct = clips = skipped = 0
    decidable: int | None = 0
    decode = SafeDecode()
    for raw in wds.DataPipeline(wds.SimpleShardList(resolve(shards)), ShardSamples()):
        if limit is not None and clips >= limit:
            break
        s = decode_or_marker(raw, decode)
        if is_marker(s):
            skipped += 1
            continue
        try:
            video, aligned, shifted, pair = held_out_pair(
                s, frozen.cfg, min_shift_s=min_shift_s, seed=seed
            )
        except SampleError:
            skipped += 1
            continue
        a, b = pair_scores(frozen, video, aligned, shifted)
        correct += int(a.item() > b.item())
        clips += 1
        told = pair_decidable(s["meta"], pair, tolerance_s=float(s["meta"]["spec"]["hop_s"]))
        decidable = None if decidable is None or told is None else decidable + int(told)
    return SyncChoice(correct, clips, skipped, decidable)
