"""data.resize_on = device: the loader cuts the crops out, the training device resizes them
as the loader's own resize (torch's antialiased bilinear kernel) would."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cmac_core.config import ConfigError, DataConfig, preset
from cmac_core.data.augment import batch_video
from cmac_core.data.loader import train_stream, with_spec_norm
from cmac_core.data.resize import resize_crops
from cmac_core.train import resize_where


def _reference(crop: torch.Tensor, out: int, flip: bool) -> torch.Tensor:
    """``[T, h, w, 3]`` uint8 -> ``[3, T, out, out]`` float, by F.interpolate."""
    x = F.interpolate(crop.permute(0, 3, 1, 2).float(), size=(out, out), mode="bilinear",
                      align_corners=False, antialias=True)  # fmt: skip
    return (x.flip(-1) if flip else x).permute(1, 0, 2, 3)


@pytest.mark.parametrize("out", [16, 56, 112])
def test_the_device_resize_is_torchs_antialiased_bilinear(out):
    """Crops smaller and larger than the output (enlarged, shrunk up to 4x), some flipped,
    of different sizes in one batch: each equals F.interpolate(antialias=True) on its own
    crop, and the padding around it is never read."""
    g = torch.Generator().manual_seed(out)
    sizes = torch.tensor([[out // 2, out + 3, 0], [4 * out, 3 * out - 1, 1], [out, out, 1],
                          [2 * out + 5, out // 3 + 1, 0]])  # fmt: skip
    h, w = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    crops = torch.full((4, 3, h, w, 3), 255, dtype=torch.uint8)  # padding: white
    for b, (ch, cw, _) in enumerate(sizes.tolist()):
        crops[b, :, :ch, :cw] = torch.randint(
            0, 256, (3, ch, cw, 3), generator=g, dtype=torch.uint8
        )
    got = resize_crops(crops, sizes, out)
    assert got.shape == (4, 3, 3, out, out) and got.dtype == torch.float32
    assert got.is_contiguous()  # the layout the loader's clips have
    for b, (ch, cw, flip) in enumerate(sizes.tolist()):
        want = _reference(crops[b, :, :ch, :cw], out, bool(flip))
        assert torch.allclose(got[b], want, atol=2e-3), (b, (got[b] - want).abs().max())


def _batches(shards, data: DataConfig, n: int = 2) -> list[dict]:
    stream = train_stream(str(shards), data, batch_size=4, workers=0, seed=3)
    out = []
    for batch in stream.loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


def test_the_device_side_makes_the_loaders_batch(demo_shards):
    """Same seed, same clips, same crops, flips and jitter: the batch finished on the device
    from uncut-to-size crops equals the one the loader resized, to the loader's rounding
    to bytes (one level before the jitter's factors of at most 1.4 each)."""
    data = with_spec_norm(str(demo_shards), preset("tiny").data)
    data = dataclasses.replace(data, crop_scale=(0.2, 1.0), color_jitter=0.4)
    on_loader = _batches(demo_shards, dataclasses.replace(data, resize_on="loader"))
    on_device = _batches(demo_shards, dataclasses.replace(data, resize_on="device"))
    cpu = torch.device("cpu")
    for a, b in zip(on_loader, on_device, strict=True):
        assert a["key"] == b["key"]
        assert "crops" not in a and a["video"].shape[1] == 3
        t = a["video"].shape[2]
        assert b["video"].shape[:2] == (4, t) and b["video"].shape[-1] == 3
        heights, widths = b["crops"][:, 0], b["crops"][:, 1]
        assert b["video"].shape[2:4] == (heights.max(), widths.max())
        va, vb = batch_video(a, cpu, data.crop_px), batch_video(b, cpu, data.crop_px)
        assert va.shape == vb.shape == (4, 3, t, data.crop_px, data.crop_px)
        level = 1 / 255 / 0.225  # one byte level after normalisation (the smallest std)
        assert (va - vb).abs().max() <= 3 * level, (va - vb).abs().max()
    assert any(b["crops"][:, 2].any() for b in on_device)  # some clips flipped
    assert any((b["crops"][:, :2] != b["crops"][0, :2]).any() for b in on_device)  # sizes differ


def test_auto_resizes_on_cuda_only_and_a_bad_value_is_one_line():
    data = preset("tiny").data
    assert resize_where(data, torch.device("cuda", 1)).resize_on == "device"
    assert resize_where(data, torch.device("cpu")).resize_on == "loader"
    loader = dataclasses.replace(data, resize_on="loader")
    assert resize_where(loader, torch.device("cuda")).resize_on == "loader"
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(data, resize_on="gpu")
    assert str(e.value) == "data.resize_on must be one of auto, loader, device, got 'gpu'"
