"""The synchronization two-alternative forced choice on held-out segments.

For each segment one clip (fixed by ``seed`` and the key) is shown with its aligned
audio and with the same segment's audio shifted by at least ``min_shift_s``, both
inside the stored spectrogram (``data/sync.py``'s rule), centre-cropped as in
evaluation. A model scores both; the clip counts as correct when the aligned audio
scores higher. Chance is 0.5. ``lla`` scores with its sync head (``sync_logits``);
a model without one (cmac, avid) with the cosine of its clip embeddings ``z_v . z_a``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds

from avprep.schema import SampleError
from cmac_core.data.augment import crop_resize, finish_video, spec_norm, spec_to_tensor
from cmac_core.data.clip import cut_columns, frame_indices
from cmac_core.data.damage import ShardSamples, decode_or_marker, is_marker
from cmac_core.data.shards import resolve
from cmac_core.data.stages import SafeDecode, decode_jpegs
from cmac_core.data.sync import sync_pair
from cmac_core.embed.frozen import Frozen
from cmac_core.models.coattention import sync_logits


@dataclass
class SyncChoice:
    correct: int
    clips: int  # segments scored (too short ones are left out, see ``skipped``)
    skipped: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.clips if self.clips else float("nan")


def held_out_pair(sample: dict, frozen_cfg, *, min_shift_s: float, seed: int):
    """A decoded sample (``SafeDecode``) -> ``(video [1, 3, T, S, S] uint8, aligned, shifted
    [1, 1, F, N])``, the same for the same key and seed; SampleError when too short."""
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
    return video, specs[0], specs[1]


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
    decode = SafeDecode()
    for raw in wds.DataPipeline(wds.SimpleShardList(resolve(shards)), ShardSamples()):
        if limit is not None and clips >= limit:
            break
        s = decode_or_marker(raw, decode)
        if is_marker(s):
            skipped += 1
            continue
        try:
            video, aligned, shifted = held_out_pair(
                s, frozen.cfg, min_shift_s=min_shift_s, seed=seed
            )
        except SampleError:
            skipped += 1
            continue
        a, b = pair_scores(frozen, video, aligned, shifted)
        correct += int(a.item() > b.item())
        clips += 1
    return SyncChoice(correct, clips, skipped)
