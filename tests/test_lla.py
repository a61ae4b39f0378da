"""--method lla (issue 13): the co-attention network and its synchronization pretext.
Real models, real shards, real processes (the CLI, torchrun with gloo, kill -9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from conftest import kill_when, run_cli

from avprep.schema import SampleError
from cmac_core.config import ConfigError, preset
from cmac_core.data.clip import Window
from cmac_core.data.damage import ShardSamples, decode_or_marker, is_marker
from cmac_core.data.loader import train_stream, with_spec_norm
from cmac_core.data.stages import ClipWindow, SafeDecode
from cmac_core.data.sync import SyncPair, shift_range, sync_pair
from cmac_core.embed.frozen import Frozen
from cmac_core.models import build
from cmac_core.models.coattention import LLAModel, sync_logits
from cmac_core.sync_2afc import SyncChoice, held_out_pair, pair_decidable, pair_scores, sync_2afc
from cmac_core.sync_task import SyncTask, other_video_partner

ENV = {"OMP_NUM_THREADS": "1"}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def lla_cfg(**model):
    cfg = preset("tiny", method="lla")
    return cfg.replace("model", **model) if model else cfg


def samples(shards: Path) -> list[dict]:
    out = []
    for url in sorted(shards.glob("*.tar")):
        for raw in wds.DataPipeline(wds.SimpleShardList([str(url)]), ShardSamples()):
            s = decode_or_marker(raw, SafeDecode())
            if not is_marker(s):
                out.append(s)
    return out


# 1. The shifted window ------------------------------------------------------------------


def _meta(n_frames: int, fps: float, hop_s: float, spec_start_s: float) -> dict:
    return {"frame_times": [i / fps for i in range(n_frames)], "fps": fps,
            "spec": {"hop_s": hop_s}, "spec_start_s": spec_start_s}  # fmt: skip


def test_the_shift_never_leaves_the_segment_and_is_at_least_the_minimum():
    rng = np.random.default_rng(0)
    checked = refused = 0
    for _ in range(400):
        fps = float(rng.choice([8.0, 16.0, 25.0, 29.97]))
        hop = float(rng.choice([0.01, 0.02, 0.016]))
        n_frames = int(rng.integers(4, 80))
        seconds = n_frames / fps
        total = int(round((seconds + rng.uniform(-0.1, 0.1)) / hop))  # ends near the frames'
        clip = int(rng.integers(2, 17))
        lo = float(rng.uniform(0.1, 1.5))
        hi = float(rng.choice([0.0, lo + rng.uniform(0, 1)]))
        audio_s = float(rng.choice([0.0, 0.5, 1.0]))
        meta = _meta(n_frames, fps, hop, float(rng.uniform(-0.02, 0.02)))
        try:
            pair = sync_pair(meta, total, clip, rng, min_shift_s=lo, max_shift_s=hi,
                             audio_seconds=audio_s)  # fmt: skip
        except SampleError as e:
            assert "no room" in str(e)
            refused += 1
            continue
        checked += 1
        for w in (pair.aligned, pair.shifted):
            assert w.first_column >= 0 and w.first_column + w.n_columns <= total
        k = pair.shifted.first_column - pair.aligned.first_column
        assert abs(pair.shift_s) >= lo - 1e-9 and pair.shift_s == pytest.approx(k * hop)
        if hi:
            assert abs(pair.shift_s) <= hi + 1e-9
        assert pair.shifted.first_frame == pair.aligned.first_frame  # the same frames
    assert checked > 200 and refused > 10  # both sides of the rule were exercised


def test_a_segment_too_short_for_a_shift_is_refused_not_padded():
    meta = _meta(32, 16.0, 0.01, 0.0)  # 2 s of frames and of audio
    rng = np.random.default_rng(0)
    pair = sync_pair(meta, 200, 16, rng, min_shift_s=1.0)  # 1 s clip: only 1 s apart fits
    assert abs(pair.shift_s) == pytest.approx(1.0)
    with pytest.raises(SampleError, match="no room"):
        sync_pair(meta, 200, 16, rng, min_shift_s=1.01)
    assert shift_range(0.01, 0.5, 0.0) == (50, None)


def test_pipeline_shifted_audio_is_the_stored_spectrogram_moved(demo_shards):
    cfg = preset("tiny", method="lla").data
    window = ClipWindow(cfg.clip_frames, sync_shift_min_s=cfg.sync_shift_min_s, seed=0, rank=0,
                        epoch=None)  # fmt: skip
    for s in samples(demo_shards):
        out = window(dict(s))
        spec, n = s["spec"], out["spec"].shape[1]
        hop = s["meta"]["spec"]["hop_s"]
        first = out["window"].first_column
        k = round(out["shift_s"] / hop)
        assert abs(out["shift_s"]) >= cfg.sync_shift_min_s - 1e-9
        assert first + k >= 0 and first + k + n <= spec.shape[1]  # inside: nothing padded
        np.testing.assert_array_equal(out["spec_shifted"], spec[:, first + k : first + k + n])
        np.testing.assert_array_equal(out["spec"], spec[:, first : first + n])


# 2. Balanced labels, other-video negatives -------------------------------------------


def test_every_clip_of_a_training_batch_brings_its_negative(demo_shards):
    cfg = preset("tiny", method="lla")
    data = with_spec_norm(str(demo_shards), cfg.data)
    stream = train_stream(str(demo_shards), data, batch_size=4, workers=0)
    batch = next(iter(stream.loader))
    assert batch["spec_shifted"].shape == batch["spec"].shape
    assert (batch["shift_s"].abs() >= cfg.data.sync_shift_min_s - 1e-9).all()
    assert not torch.equal(batch["spec_shifted"], batch["spec"])


def test_labels_are_balanced_and_the_loss_is_bce_over_both():
    torch.manual_seed(0)
    cfg = lla_cfg()
    model = build("lla", cfg.model).eval()  # eval: the same numbers in both passes
    task = SyncTask(model, cfg.loss)
    video, spec, shifted = (torch.randn(6, 3, 8, 64, 64), torch.randn(6, 1, 128, 50),
                            torch.randn(6, 1, 128, 50))  # fmt: skip
    out = task(video, spec, 0, torch.arange(6), spec_shifted=shifted)
    assert out["positive_frac"].item() == 0.5
    pos, neg = sync_logits(model, video, spec, shifted)
    assert pos.shape == neg.shape == (6,)
    logsig = torch.nn.functional.logsigmoid
    want = -(logsig(pos).sum() + logsig(-neg).sum()) / 12  # 6 aligned (1), 6 shifted (0)
    torch.testing.assert_close(out["loss"], want, rtol=1e-5, atol=1e-6)


def test_other_video_negatives_never_come_from_the_same_video():
    ids = torch.tensor([7, 7, 7, 3, 3, 9])
    partner = other_video_partner(ids)
    assert (ids[partner] != ids).all()
    alone = other_video_partner(torch.tensor([5, 5, 5]))
    assert alone.tolist() == [0, 1, 2]  # no other video: the shifted negative stays
    torch.manual_seed(0)
    cfg = lla_cfg().replace("loss", sync_easy_steps=3)
    task = SyncTask(build("lla", cfg.model), cfg.loss)
    video, spec = torch.randn(6, 3, 8, 64, 64), torch.randn(6, 1, 128, 50)
    easy = task(video, spec, 2, ids, spec_shifted=spec.flip(0))
    hard = task(video, spec, 3, ids, spec_shifted=spec.flip(0))
    assert easy["other_video_frac"].item() == 1.0 and hard["other_video_frac"].item() == 0.0


# 3. The model -------------------------------------------------------------------------


@pytest.mark.parametrize("layers,self_attention", [(1, False), (1, True), (3, True)])
def test_variants_keep_time_and_give_a_localization_map(layers, self_attention):
    torch.manual_seed(0)
    cfg = lla_cfg(coattention_layers=layers, coattention_self=self_attention)
    model = LLAModel(cfg.model).eval()
    video, spec = torch.randn(2, 3, 16, 64, 80), torch.randn(2, 1, 128, 100)
    feats = model(video, spec)
    t, (h, w) = 16, feats["grid_hw"].tolist()  # every frame (keep_time); 64 x 80 px / 16
    assert cfg.model.keep_time
    assert (h, w) == (4, 5) and feats["v_tokens"].shape == (2, t * h * w, 64)
    assert feats["a_tokens"].shape == (2, 4 * 25, 64)  # 4 frequency rows x 25 of time (100 / 4)
    torch.testing.assert_close(feats["beta_v"].sum(-1), torch.ones(2))
    assert len(model.blocks) == layers
    assert (model.blocks[0].self_v is not None) == self_attention


def test_tokens_keep_time():
    """Attention and mean pooling ignore the order of tokens; the place codes do not: the
    same audio map rolled along time gives another logit, and only through the codes."""
    torch.manual_seed(0)
    model = LLAModel(lla_cfg().model).eval()
    video, spec = torch.randn(1, 3, 16, 64, 64), torch.randn(1, 1, 128, 100)
    with torch.no_grad():
        v_tokens, _ = model.encode_video(video)
        a_map = model.audio(spec)  # [1, C, 4, 25]
        rolled = a_map.roll(a_map.shape[-1] // 2, dims=-1)  # half a window later

        def logit(a_tokens):
            v, a, _ = model.attend(v_tokens, a_tokens)
            return model.pair_logits(v, a).item()  # pooled: t and f do not matter

        bare = [logit(m.flatten(2).transpose(1, 2)) for m in (a_map, rolled)]
        coded = [logit(model.positions.audio(m)) for m in (a_map, rolled)]
    assert bare[0] == pytest.approx(bare[1], abs=1e-5)  # without codes: the order is lost
    assert abs(coded[0] - coded[1]) > 1e-4


def test_a_per_time_sync_head_compares_the_same_seconds():
    """model.sync_head per_time: without place codes the pooled head cannot tell an audio
    map from itself rolled in time (test_tokens_keep_time); the per-time head can, and
    scores the same as the mean of its steps."""
    torch.manual_seed(0)
    model = LLAModel(lla_cfg(sync_head="per_time").model).eval()
    video, spec = torch.randn(1, 3, 8, 64, 64), torch.randn(1, 1, 128, 100)
    with torch.no_grad():
        v_tokens, (t, _, _) = model.encode_video(video)
        a_map = model.audio(spec)
        f = a_map.shape[2]
        logits = []
        for m in (a_map, a_map.roll(a_map.shape[-1] // 2, dims=-1)):
            v, a, _ = model.attend(v_tokens, m.flatten(2).transpose(1, 2))
            logits.append(model.pair_logits(v, a, t=t, f=f).item())
        out = model(video, spec)
        assert out["sync_logit"].shape == (1,)
    assert t == 8 and abs(logits[0] - logits[1]) > 1e-4
    with pytest.raises(ConfigError, match="sync_head"):
        lla_cfg(sync_head="late")


def test_the_attended_per_time_head_pools_where_the_audio_guided_map_looks():
    """model.sync_head per_time_attended: with a uniform map it is the per_time head; with
    the map on one place per time step, that place's tokens alone make the score."""
    torch.manual_seed(0)
    model = LLAModel(lla_cfg(sync_head="per_time_attended").model).eval()
    b, t, s, c = 2, 4, 9, model.cfg.video_widths[-1]
    v, a = torch.randn(b, t * s, c), torch.randn(b, 2 * 6, c)
    uniform = torch.full((b, t * s), 1.0 / (t * s))
    at = torch.zeros(b, t, s)
    at[:, :, 3] = 1.0 / t
    with torch.no_grad():
        attended = model.pair_logits(v, a, t=t, f=2, audio_guided=uniform)
        model.cfg.sync_head = "per_time"
        plain = model.pair_logits(v, a, t=t, f=2)
        model.cfg.sync_head = "per_time_attended"
        spot = model.pair_logits(v, a, t=t, f=2, audio_guided=at.reshape(b, -1))
        only = v.reshape(b, t, s, c)[:, :, 3:4].expand(b, t, s, c).reshape(b, t * s, c)
        model.cfg.sync_head = "per_time"
        only_spot = model.pair_logits(only, a, t=t, f=2)
    torch.testing.assert_close(attended, plain)
    torch.testing.assert_close(spot, only_spot)
    assert (spot - plain).abs().min() > 1e-4
    model.cfg.sync_head = "per_time_attended"
    video, spec = torch.randn(2, 3, 8, 64, 64), torch.randn(2, 1, 128, 100)
    same, other, maps = model.sync_logits(video, spec, spec.roll(40, dims=-1))
    assert same.shape == other.shape == (2,) and maps.shape[0] == 4


def test_motion_channels_are_each_frame_minus_the_one_before():
    """model.video_motion: the stem also sees residual frames; a still clip's are zero, so
    only motion changes what the extra weights see."""
    from cmac_core.models.video_encoder import residual_frames

    video = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 3, 4, 2, 2) ** 2
    res = residual_frames(video)
    assert res.shape == video.shape and not res[:, :, 0].any()
    torch.testing.assert_close(res[:, :, 1:], video[:, :, 1:] - video[:, :, :-1])
    torch.manual_seed(0)
    model = LLAModel(lla_cfg(video_motion=True).model).eval()
    assert model.video.stem[0].in_channels == 6
    still = torch.randn(1, 3, 1, 64, 64).expand(1, 3, 8, 64, 64).contiguous()
    moving = still.clone()
    moving[:, :, 4:] = moving[:, :, 4:].roll(8, dims=-1)
    with torch.no_grad():
        before = [model.encode_video(x)[0] for x in (still, moving)]
        model.video.stem[0].weight[:, 3:] = 0  # the motion weights silenced
        after = [model.encode_video(x)[0] for x in (still, moving)]
    torch.testing.assert_close(before[0], after[0])  # a still clip: no motion input at all
    assert (before[1] - after[1]).abs().max() > 1e-3  # a moving one: the motion weights count


def test_lla_needs_a_shift_and_says_so_in_one_line(demo_shards, tmp_path):
    with pytest.raises(ConfigError, match="sync_shift_min_s"):
        preset("tiny").replace("loss", method="lla")
    (tmp_path / "cmac.json").write_text(json.dumps(preset("tiny").to_dict()))
    proc = run_cli("pretrain", str(demo_shards), "--out", str(tmp_path / "run"), "--config",
                   str(tmp_path / "cmac.json"), "--method", "lla", "--steps", "1", check=False, env=ENV)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "sync_shift_min_s" in proc.stderr and not (tmp_path / "run").exists()


# 4. Training, DDP, resume, embed and localize on its checkpoints ------------------------


def test_pretrain_lla_trains_and_its_checkpoint_names_the_method(demo_shards, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny",
                   "--method", "lla", "--steps", "6", "--save-every", "3", env=ENV)  # fmt: skip
    assert "6 steps" in proc.stdout
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(np.isfinite(r["sync"]) and r["positive_frac"] == 0.5 for r in records)
    assert all(0.3 < r["sync"] < 2.0 for r in records)  # BCE near ln 2 at the start, not wild
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["arch"] == "lla" and ckpt["config"]["loss"]["method"] == "lla"
    assert ckpt["config"]["data"]["sync_shift_min_s"] == 0.5
    assert any(k.startswith("blocks.0.audio_guided") for k in ckpt["model"])
    assert "video.stem.0.weight" in ckpt["model"]  # the CMAC encoders, under their names

    emb, loc = tmp_path / "emb", tmp_path / "loc"
    run_cli("embed", str(demo_shards), "--ckpt", str(run / "last.pt"), "--out", str(emb),
            "--device", "cpu", "--workers", "1", env=ENV)  # fmt: skip
    table = pq.read_table(sorted(emb.glob("*.parquet")))
    cmac_names = {"key", "video_embedding", "audio_embedding", "video_feature", "audio_feature"}
    assert cmac_names <= set(table.schema.names) and table.num_rows == len(samples(demo_shards))
    assert table.schema.metadata[b"method"] == b"lla"
    z = np.stack(table["video_embedding"].to_numpy(zero_copy_only=False))
    assert np.isfinite(z).all() and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-4)
    run_cli("localize", str(demo_shards), "--ckpt", str(run / "last.pt"), "--out", str(loc),
            "--device", "cpu", "--limit", "3", env=ENV)  # fmt: skip
    maps = sorted(p for p in loc.glob("*.npy") if not p.name.endswith(".alpha.npy"))
    assert len(maps) == 3 and (loc / "index.html").exists()
    assert not list(loc.glob("*.gradcam.npy"))  # lla scores pairs by its sync head
    for p in maps:
        m = np.load(p)
        assert m.ndim == 2 and np.isfinite(m).all() and m.min() >= 0 and m.std() > 0
        assert p.with_suffix(".png").exists()

    # the synchronization 2AFC scores every segment, the same way twice
    frozen = Frozen.load(run / "last.pt", torch.device("cpu"))
    first = sync_2afc(frozen, str(demo_shards), min_shift_s=0.5, seed=1)
    assert first.clips == len(samples(demo_shards)) and first.skipped == 0
    assert 0 <= first.correct <= first.clips
    assert sync_2afc(frozen, str(demo_shards), min_shift_s=0.5, seed=1) == first
    assert (
        sync_2afc(frozen, str(demo_shards), min_shift_s=1.6, seed=1).skipped == first.clips
    )  # 2 s


def test_the_2afc_scores_a_cmac_checkpoint_by_its_embeddings(tiny_ckpt, demo_shards):
    frozen = Frozen.load(tiny_ckpt, torch.device("cpu"))
    s = samples(demo_shards)[0]
    video, aligned, shifted, _ = held_out_pair(s, frozen.cfg, min_shift_s=0.5, seed=0)
    a, b = pair_scores(frozen, video, aligned, shifted)
    z_v, z_a, _, _ = frozen.embed(video, aligned)
    torch.testing.assert_close(a, (z_v * z_a).sum(-1))  # the cosine: both are unit vectors
    assert not torch.equal(aligned, shifted) and a.shape == b.shape == (1,)
    result = sync_2afc(frozen, str(demo_shards), limit=5)
    assert result.clips == 5 and 0 <= result.accuracy <= 1


def _pair(first_column: int, shift_columns: int) -> SyncPair:
    aligned = Window(0, 8, first_column, 50, 0.0, 0.5)  # 50 columns of 10 ms: 0.5 s
    return SyncPair(aligned, Window(0, 8, first_column + shift_columns, 50, 0.0, 0.5), 0.0)


@pytest.mark.parametrize(("onsets", "first", "shift", "told"), [
    ([], 0, 100, False),  # no strike anywhere: a coin toss
    ([5.0], 0, 100, False),  # strikes outside both windows
    ([0.2], 0, 100, True),  # a strike in the aligned window only
    ([1.2], 0, 100, True),  # ... in the shifted one only
    ([0.2, 1.2], 0, 100, False),  # at the same time in each: periodic, nothing to tell
    ([0.2, 1.3], 0, 100, True),  # 0.1 s apart relative to their windows
])  # fmt: skip
def test_a_pair_is_decidable_only_where_the_strikes_differ(onsets, first, shift, told):
    meta = {"spec": {"hop_s": 0.01}, "spec_start_s": 0.0, "extra": {"synth": 1, "onsets_s": onsets}}
    assert pair_decidable(meta, _pair(first, shift), tolerance_s=0.01) is told
    assert pair_decidable({"spec": {"hop_s": 0.01}, "spec_start_s": 0.0}, _pair(first, shift),
                          tolerance_s=0.01) is None  # fmt: skip


def test_the_2afc_ceiling_counts_undecidable_pairs_as_coin_tosses():
    assert SyncChoice(correct=5, clips=10, skipped=0, decidable=4).ceiling == pytest.approx(0.7)
    assert SyncChoice(correct=5, clips=10, skipped=0).ceiling is None


@pytest.mark.slow
def test_two_process_gloo_run_takes_equal_steps(demo_shards, tmp_path):
    shards = sorted(str(p) for p in demo_shards.glob("*.tar"))[:3]  # uneven: 3 shards, 2 ranks
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "avprep", "pretrain", "::".join(shards), "--out", str(run), "--config", "tiny",
           "--method", "lla", "--epochs", "2", "--batch-size", "2", "--workers", "0"]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["step"] == ranks[1]["step"] > 0
    assert metrics(run)[-1]["step"] == ranks[0]["step"]
    assert torch.load(run / "last.pt", weights_only=True)["arch"] == "lla"


@pytest.mark.slow
def test_kill_9_then_resume_continues(demo_shards, tmp_path):
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "avprep", "pretrain", str(demo_shards), "--out", str(run), "--config", "tiny",
            "--method", "lla", "--steps", "30", "--save-every", "4", "--device", "cpu"]  # fmt: skip
    kill_when(args, (run / "step-8.pt").exists, env=ENV)
    assert (run / "step-8.pt").exists()
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 8 <= saved < 30, saved
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--method", "lla",
            "--steps", "30", "--save-every", "4", "--resume", "--device", "cpu", env=ENV)  # fmt: skip
    assert [r["step"] for r in metrics(run)] == list(range(1, 31))
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 30
    # the resumed run kept lla: another method on the same run dir is refused
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny", "--steps", "40",
                   "--resume", "--device", "cpu", check=False, env=ENV)  # fmt: skip
    assert proc.returncode == 2 and "other settings" in proc.stderr
