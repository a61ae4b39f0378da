"""Augmentations: one random draw per clip, applied identically to all its frames.

Video: random resized crop and horizontal flip, then colour jitter (brightness,
contrast, saturation) and ImageNet normalisation on the training device
(``finish_video``). The crop box and flip are drawn in the loader workers; the
resize runs there on uint8 (``crop_resize``, ``data.resize_on = loader``) or on
the training device (``resize_on = device``: the workers only cut the box out,
``resize.resize_crops`` does the rest). Audio: optional SpecAugment-style time
and frequency masks, then normalisation by the constants of the spectrogram's
preset (``spec_norm``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cmac_core.data.resize import resize_crops

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
GRAY = torch.tensor([0.299, 0.587, 0.114])  # luma weights of the saturation jitter


def crop_box(
    h: int, w: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop of ``scale`` area and ratio in [3/4, 4/3]."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def center_box(h: int, w: int) -> tuple[int, int, int, int]:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def draw_crop(
    h: int,
    w: int,
    rng: np.random.Generator | None,
    *,
    scale: tuple[float, float] = (0.3, 1.0),
    flip_p: float = 0.5,
) -> tuple[int, int, int, int, bool]:
    """``(top, left, height, width, flip)`` of one clip's crop; with ``rng`` None a centre
    crop, no flip (evaluation). The draws are made in this order wherever the crop is
    resized, so a seed gives the same crops on either side."""
    if rng is None:
        return (*center_box(h, w), False)
    box = crop_box(h, w, scale, rng)
    return (*box, bool(rng.random() < flip_p))


def crop_resize(
    frames: np.ndarray,
    crop_px: int,
    rng: np.random.Generator | None,
    *,
    scale: tuple[float, float] = (0.3, 1.0),
    flip_p: float = 0.5,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 -> cropped, resized, maybe flipped ``[3, T, crop_px, crop_px]`` uint8.

    With ``rng`` None: a centre crop, no flip (evaluation). The crop is resized as
    uint8 (torch's antialiased bilinear kernel for channels-last bytes, ~10x faster
    than in float32). With ``out`` (such as one clip's slot of a batch) the result
    is written there. Colour jitter and normalisation come later, on the
    training device, in ``finish_video``: loader workers hand over bytes, a
    quarter of the float32 clip.
    """
    t, h, w, _ = frames.shape
    top, left, ch, cw, flip = draw_crop(h, w, rng, scale=scale, flip_p=flip_p)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + ch, left : left + cw]))
    x = F.interpolate(x.permute(0, 3, 1, 2), size=(crop_px, crop_px), mode="bilinear",
                      align_corners=False, antialias=True)  # fmt: skip
    if flip:
        x = x.flip(-1)
    x = x.permute(1, 0, 2, 3)  # [3, T, crop_px, crop_px]
    return x.contiguous() if out is None else out.copy_(x)


def jitter_factors(rng: np.random.Generator | None, strength: float) -> tuple[float, float, float]:
    """(brightness, contrast, saturation) factors of one clip; (1, 1, 1) when off."""
    if rng is None or strength <= 0:
        return 1.0, 1.0, 1.0
    b, c, s = (float(rng.uniform(1 - strength, 1 + strength)) for _ in range(3))
    return b, c, s


def finish_video(
    video: torch.Tensor,
    jitter: torch.Tensor | None = None,
    crops: torch.Tensor | None = None,
    crop_px: int = 0,
) -> torch.Tensor:
    """uint8 clips ``[B, 3, T, H, W]`` -> colour-jittered, normalised float32, on their device.

    ``jitter`` ``[B, 3]``: per clip brightness ``x*b``, contrast ``(x - m)*c + m``
    (m: the frame's mean) and saturation ``(x - gray)*s + gray``, the same for all
    frames of a clip, then the clamp to [0, 255] and ImageNet normalisation.
    With ``crops`` (``data.resize_on = device``), ``video`` holds the crops not yet
    resized, ``[B, T, H, W, 3]``, each in its top-left corner, ``crops`` ``[B, 3]`` their
    (height, width, flip): they are resized to ``crop_px`` first (``resize.resize_crops``).
    """
    x = video.float() if crops is None else resize_crops(video, crops, crop_px)
    gray_w, mean, std = _constants(x.device)
    if jitter is not None:  # already on x's device: a dtype change, never a copy between devices
        b, c, s = (f.view(-1, 1, 1, 1, 1).to(dtype=x.dtype) for f in jitter.unbind(1))
        x = x * b
        m = x.mean(dim=(1, 3, 4), keepdim=True)
        x = (x - m) * c + m
        gray = (gray_w * x).sum(1, keepdim=True)
        x = ((x - gray) * s + gray).clamp_(0, 255)
    return x.div_(255).sub_(mean).div_(std)


def batch_video(batch: dict, device: torch.device, crop_px: int) -> torch.Tensor:
    """A training batch's clips on ``device``, finished there (``finish_video``): resized
    first where the loader left that to the device (``"crops"``)."""
    crops = batch.get("crops")
    return finish_video(
        batch["video"].to(device, non_blocking=True),
        batch["jitter"].to(device, non_blocking=True),
        None if crops is None else crops.to(device, non_blocking=True),
        crop_px,
    )


_ON_DEVICE: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRAY, MEAN and STD as float32 ``[1, 3, 1, 1, 1]`` on ``device``, copied there once:
    a copy from pageable host memory each step would make the host wait for the device."""
    if device not in _ON_DEVICE:
        _ON_DEVICE[device] = tuple(
            t.reshape(1, 3, 1, 1, 1).to(device=device, dtype=torch.float32)
            for t in (GRAY, MEAN, STD)
        )
    return _ON_DEVICE[device]


# (mean, std) of log-mel values per avprep preset (avprep.spectrogram.PRESETS). logmel128:
# the constants every run before used (measured on the two real clips with sound in
# shared/data/real at 16 kHz: mean -7.0, std 3.6). vggish64 (log(|mel| + 0.01), another
# scale): mean -0.94, std 1.62 on the same clips, where -6 / 5 would squeeze its values
# into (x + 6) / 5 = 1.0 +- 0.3.
SPEC_NORMS: dict[str, tuple[float, float]] = {"logmel128": (-6.0, 5.0), "vggish64": (-1.0, 1.6)}


class SpecNormError(ValueError):
    """No normalisation is known for a spectrogram preset and none was configured."""


def preset_norm(preset: object) -> tuple[float, float]:
    """``(mean, std)`` for a preset name (``SPEC_NORMS``); SpecNormError if unknown."""
    if preset not in SPEC_NORMS:
        raise SpecNormError(
            f"no log-mel normalisation is known for spectrogram preset {str(preset)[:40]!r} "
            f"(known: {', '.join(SPEC_NORMS)}): set data.spec_mean and data.spec_std"
        )
    return SPEC_NORMS[preset]


def spec_norm(data_cfg, meta: dict) -> tuple[float, float]:
    """``(mean, std)`` for one sample: the config's numbers, or (None) its preset's."""
    if data_cfg.spec_mean is not None:
        return data_cfg.spec_mean, data_cfg.spec_std
    return preset_norm(meta["spec"].get("preset"))


def spec_to_tensor(
    spec: np.ndarray,
    rng: np.random.Generator | None,
    *,
    mean: float,
    std: float,
    time_masks: int = 0,
    freq_masks: int = 0,
    mask_frac: float = 0.125,
) -> torch.Tensor:
    """``[n_mels, n_columns]`` float16 -> normalised ``[1, n_mels, n_columns]`` float32."""
    x = (torch.from_numpy(spec.astype(np.float32)) - mean) / std
    if rng is not None:
        for axis, count in ((1, time_masks), (0, freq_masks)):
            size = x.shape[axis]
            longest = max(1, int(size * mask_frac))
            for _ in range(count):
                width = int(rng.integers(0, longest + 1))
                start = int(rng.integers(0, max(1, size - width + 1)))
                if axis == 1:
                    x[:, start : start + width] = 0.0
                else:
                    x[start : start + width, :] = 0.0
    return x.unsqueeze(0)
