"""The method's fixes (issue 12, part 3): gradients through saturated attention, entropy
diagnostics, the audio window and frequency tokens, same-video negatives, the log-mel
normalisation of each spectrogram preset. Real models, real shards, real processes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import webdataset as wds
from conftest import run_cli

from cmac_core.config import ConfigError, DataConfig, ModelConfig, PretrainConfig, preset
from cmac_core.data.augment import SPEC_NORMS
from cmac_core.data.clip import choose_window, cut_columns
from cmac_core.data.damage import ShardSamples, decode_or_marker, is_marker
from cmac_core.data.evaluation import EvalClips
from cmac_core.data.loader import with_spec_norm
from cmac_core.data.stages import SafeDecode, video_id_hash
from cmac_core.losses import AttentionConsistency, CrossModalNCE, normalised_entropy
from cmac_core.metrics import Display
from cmac_core.models import build
from cmac_core.task import PretrainTask

ENV = {"OMP_NUM_THREADS": "1"}


def tiny_model(**changes) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = preset("tiny").replace("model", **changes) if changes else preset("tiny")
    return build("cmac", cfg.model).eval()


def first_sample(shards: Path) -> dict:
    url = str(sorted(shards.glob("*.tar"))[0])
    for raw in wds.DataPipeline(wds.SimpleShardList([url]), ShardSamples()):
        s = decode_or_marker(raw, SafeDecode())
        if not is_marker(s):
            return s
    raise AssertionError(f"no valid sample in {url}")


# 1. The consistency term from logits ------------------------------------------------


def test_consistency_keeps_its_gradient_where_alpha_saturates():
    logits = torch.tensor([[30.0, 0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 10.0, 0.0, 0.0]]).softmax(-1)  # far from alpha
    kl = AttentionConsistency()(logits, target)
    exact = (target * (target.log() - logits.detach().log_softmax(-1))).sum()
    assert kl.item() == pytest.approx(exact.item(), rel=1e-5) and kl.item() > 25
    kl.backward()
    # d KL / d logits = softmax(logits) - beta: about (1, -1, 0, 0), not 2e-14
    expected = logits.detach().softmax(-1) - target
    torch.testing.assert_close(logits.grad, expected, rtol=1e-4, atol=1e-6)
    assert logits.grad.abs().max() > 0.9


def test_model_exposes_the_scorer_logits_beside_alpha():
    model = tiny_model()
    feats = model(torch.randn(2, 3, 4, 64, 64), torch.randn(2, 1, 128, 50))
    for m in ("v", "a"):
        logits = feats[f"alpha_{m}_logits"]
        torch.testing.assert_close(feats[f"alpha_{m}"], logits.softmax(-1))
    assert feats["alpha_v_logits"].shape == (2, 16) and feats["alpha_a_logits"].shape == (2, 4)


# 2. Entropies, logged and kept out of the loss ----------------------------------------


def test_normalised_entropy_is_one_for_uniform_and_zero_for_one_token():
    n = 49
    uniform = torch.full((3, n), -math.log(n))
    assert normalised_entropy(uniform).item() == pytest.approx(1.0)
    peaked = torch.tensor([[0.0] + [-math.inf] * (n - 1)])
    assert normalised_entropy(peaked).item() == pytest.approx(0.0)
    half = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))  # log 2 / log 4
    assert normalised_entropy(half).item() == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["cmac", "avid"])
def test_task_reports_entropies_detached_and_out_of_the_loss(method):
    cfg = preset("tiny")
    model = build("cmac", cfg.model)
    task = PretrainTask(model, cfg.replace("loss", method=method).loss)
    torch.manual_seed(0)
    video, spec = torch.randn(4, 3, 4, 64, 64), torch.randn(4, 1, 128, 50)
    out = task(video, spec, step=10_000)
    names = {"entropy_beta_v", "entropy_beta_a"}
    if method == "cmac":
        names |= {"entropy_alpha_v", "entropy_alpha_a"}
    assert names <= set(out) and not ({"entropy_alpha_v", "entropy_alpha_a"} - names) & set(out)
    for k in names:
        assert not out[k].requires_grad and 0.0 <= out[k].item() <= 1.0 + 1e-6, k
    terms = out["nce"] + (out["att_v"] + out["att_a"] if method == "cmac" else 0)
    assert out["loss"].item() == pytest.approx(terms.item(), rel=1e-6)


def test_progress_line_shows_the_entropies(capsys):
    display = Display(10, enabled=True)
    display.update({"step": 10, "loss": 1.0, "nce": 1.0, "lr": 1e-3, "samples_per_s": 5.0,
                    "data_wait_frac": 0.1, "entropy_alpha_v": 0.93, "entropy_beta_v": 0.41})  # fmt: skip
    line = capsys.readouterr().err
    assert "H/logN" in line and "alpha_v 0.93" in line and "beta_v 0.41" in line


# 3. Audio window and frequency tokens ---------------------------------------------------


def test_frequency_tokens_pool_or_keep_rows_and_refuse_more_than_the_rows():
    spec = torch.randn(2, 1, 128, 50)
    video = torch.randn(2, 3, 4, 64, 64)
    assert tiny_model()(video, spec)["a_tokens"].shape[1] == 4  # 128 / 32, as before
    assert tiny_model(audio_freq_tokens=2)(video, spec)["a_tokens"].shape[1] == 2
    assert tiny_model(audio_freq_stride=8)(video, spec)["a_tokens"].shape[1] == 16
    feats = tiny_model(audio_freq_stride=8, audio_freq_tokens=8)(video, spec)
    assert feats["a_tokens"].shape[1] == 8 and feats["alpha_a"].shape == (2, 8)
    # the same weights' shapes whatever the stride: a checkpoint's weights load
    a, b = tiny_model().state_dict(), tiny_model(audio_freq_stride=4).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    with pytest.raises(ConfigError, match="audio_freq_tokens 8 is more than the 4"):
        tiny_model(audio_freq_tokens=8)(video, spec)
    for bad in (12, 64, 32.0, True):
        with pytest.raises(ConfigError, match="audio_freq_stride"):
            ModelConfig(audio_freq_stride=bad)
    with pytest.raises(ConfigError, match="audio_freq_tokens"):
        ModelConfig(audio_freq_tokens=-1)
    with pytest.raises(ConfigError, match="audio_seconds"):
        DataConfig(audio_seconds=-0.5)


def test_eval_clips_take_the_training_audio_window(demo_shards):
    s = first_sample(demo_shards)
    hop = s["meta"]["spec"]["hop_s"]
    default = EvalClips(DataConfig(crop_px=64, clip_frames=8), 1)(dict(s))
    assert default["spec"].shape[-1] == round(8 / s["meta"]["fps"] / hop)  # today's 0.5 s
    longer = EvalClips(DataConfig(crop_px=64, clip_frames=8, audio_seconds=2.0), 1)(dict(s))
    assert longer["spec"].shape[-1] == round(2.0 / hop)
    # the longer window holds the default one's columns in its middle
    n, m = default["spec"].shape[-1], longer["spec"].shape[-1]
    lo = (m - n) // 2
    inside = longer["spec"][..., lo - 1 : lo + n + 1]
    found = any(
        torch.equal(inside[..., i : i + n], default["spec"])
        for i in range(inside.shape[-1] - n + 1)
    )
    assert found


# 4. Same-video negatives -----------------------------------------------------------------


def _manual_nce(z_v, z_a, ids, tau=0.07):
    """The loss written out term by term, same-video negatives left out."""
    n, total = len(z_v), 0.0
    for anchors, others, within in ((z_v, z_a, z_v), (z_a, z_v, z_a)):
        for i in range(n):
            pos = math.exp(float(anchors[i] @ others[i]) / tau)
            neg = sum(
                math.exp(float(anchors[i] @ others[j]) / tau)
                for j in range(n)
                if j != i and ids[j] != ids[i]
            )
            neg += sum(
                math.exp(float(anchors[i] @ within[j]) / tau)
                for j in range(n)
                if j != i and ids[j] != ids[i]
            )
            total += -math.log(pos / (pos + neg))
    return 0.5 * total / n


def test_clips_of_one_video_are_no_negatives_of_each_other():
    torch.manual_seed(0)
    z_v, z_a = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    ids = torch.tensor([7, 7, 3, 5, 5, 5])
    nce = CrossModalNCE()
    assert nce(z_v, z_a, ids).item() == pytest.approx(_manual_nce(z_v, z_a, ids.tolist()), rel=1e-5)
    # without ids every other clip is a negative, as before
    unique = list(range(6))
    assert nce(z_v, z_a).item() == pytest.approx(_manual_nce(z_v, z_a, unique), rel=1e-5)
    # two identical clips of one video: unmasked each is the other's hardest negative
    twin_v, twin_a = z_v.clone(), z_a.clone()
    twin_v[1], twin_a[1] = twin_v[0], twin_a[0]
    assert nce(twin_v, twin_a, ids).item() < nce(twin_v, twin_a).item() - 0.1


def test_video_ids_name_the_video_not_the_segment():
    assert video_id_hash("clip_a_0000") == video_id_hash("clip_a_0007")
    assert video_id_hash("clip_a_0000") != video_id_hash("clip_b_0000")
    assert isinstance(video_id_hash("x_0001"), int) and -(2**63) <= video_id_hash("x_0001") < 2**63


def _gloo_worker(rank: int, init: str, z_v, z_a, ids, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        b = len(z_v) // 2
        part = slice(rank * b, (rank + 1) * b)
        loss = CrossModalNCE()(z_v[part], z_a[part], ids[part])
        torch.save(loss.detach(), f"{out}/rank-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_same_video_mask_spans_ranks_with_gloo(tmp_path):
    """Rank 0 holds clips 0-2, rank 1 clips 3-5; clip 2 and clip 3 share a video."""
    torch.manual_seed(1)
    z_v, z_a = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    ids = torch.tensor([1, 2, 9, 9, 4, 5])
    init = f"file://{tempfile.mkdtemp(dir=tmp_path)}/rendezvous"
    mp.spawn(_gloo_worker, args=(init, z_v, z_a, ids, str(tmp_path)), nprocs=2, join=True)
    losses = [torch.load(tmp_path / f"rank-{r}.pt").item() for r in (0, 1)]
    # each rank's loss: the mean over its anchors against the global batch, masked
    expected = []
    for r in (0, 1):
        anchors = range(3 * r, 3 * r + 3)
        total = 0.0
        for i in anchors:
            for a, o in ((z_v, z_a), (z_a, z_v)):
                logits = [float(a[i] @ o[j]) / 0.07 for j in range(6) if j == i or ids[j] != ids[i]]
                logits += [
                    float(a[i] @ a[j]) / 0.07 for j in range(6) if j != i and ids[j] != ids[i]
                ]
                pos_logit = float(a[i] @ o[i]) / 0.07
                total += -pos_logit + math.log(sum(math.exp(x) for x in logits))
        expected.append(0.5 * total / 3)
    assert losses == pytest.approx(expected, rel=1e-5)


# 5. The log-mel normalisation of each preset ----------------------------------------------


@pytest.fixture(scope="module")
def vggish_shards(tmp_path_factory) -> Path:
    from avprep.demo import make_demo_videos

    root = tmp_path_factory.mktemp("vggish")
    make_demo_videos(root / "videos", 3, duration_s=4.0)
    out = root / "shards"
    run_cli("shard", str(root / "videos"), "--out", str(out), "--segment-seconds", "2",
            "--spec-preset", "vggish64", "--shard-max-samples", "4", "--workers", "2",
            "--quiet")  # fmt: skip
    return out


def test_normalisation_follows_the_shards_preset(demo_shards, vggish_shards):
    assert DataConfig().spec_mean is None and DataConfig().spec_std is None
    v = with_spec_norm(str(vggish_shards), DataConfig())
    assert (v.spec_mean, v.spec_std, v.spec_preset) == (*SPEC_NORMS["vggish64"], "vggish64")
    m = with_spec_norm(str(demo_shards), DataConfig())
    assert (m.spec_mean, m.spec_std, m.spec_preset) == (-6.0, 5.0, "logmel128")
    given = with_spec_norm(str(vggish_shards), DataConfig(spec_mean=1.0, spec_std=2.0))
    assert (given.spec_mean, given.spec_std) == (1.0, 2.0)
    with pytest.raises(ConfigError, match="both, or neither"):
        DataConfig(spec_mean=1.0)
    # an old run's config (numbers, no preset) still loads as it was
    old = PretrainConfig.from_dict({"data": {"spec_mean": -6.0, "spec_std": 5.0}})
    assert old.data.spec_preset == "" and old.data.spec_mean == -6.0

    s = first_sample(vggish_shards)
    clips = EvalClips(v, 1)(dict(s))
    assert clips["spec"].shape[2] == 64
    first = max(0, (len(s["jpegs"]) - v.clip_frames) // 2)
    w = choose_window(s["meta"], v.clip_frames, None, first_frame=first)
    raw = torch.from_numpy(cut_columns(s["spec"], w).astype(np.float32))
    torch.testing.assert_close(clips["spec"][0, 0], (raw + 1.0) / 1.6)  # vggish64's numbers
    # its silence floor, log(0.01) = -4.6, lands at -2.25, not at (-4.6 + 6) / 5 = 0.28
    assert float(raw.min()) == pytest.approx(math.log(0.01), abs=0.01)
    with pytest.raises(Exception, match="preset 'vggish64'.*logmel128"):
        EvalClips(m, 1)(dict(s))  # a logmel128 model on vggish64 shards: damage, said so


def test_a_vggish_run_records_its_normalisation_and_logs_entropies(vggish_shards, tmp_path):
    run = tmp_path / "run"
    run_cli("pretrain", str(vggish_shards), "--out", str(run), "--config", "tiny", "--steps", "3",
            "--batch-size", "4", env=ENV)  # fmt: skip
    data = json.loads((run / "config.json").read_text())["data"]
    assert (data["spec_mean"], data["spec_std"], data["spec_preset"]) == (-1.0, 1.6, "vggish64")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["config"]["data"] == data
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        for k in ("entropy_alpha_v", "entropy_alpha_a", "entropy_beta_v", "entropy_beta_a"):
            assert 0.0 <= r[k] <= 1.0 + 1e-6, (k, r)
    # resuming with the same shards resolves the same numbers: accepted
    run_cli("pretrain", str(vggish_shards), "--out", str(run), "--config", "tiny", "--steps", "4",
            "--batch-size", "4", "--resume", env=ENV)  # fmt: skip
    assert os.path.exists(run / "step-4.pt")
