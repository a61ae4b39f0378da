"""avprep evaluate: the arms' configs (lla, the target arms); the report (table, probe
ceiling, paired differences, checks, curves); the shuffled-audio control's shards (real
avprep shards, every spectrogram moved to another video, nothing lost); the benchmark's
shards; and, marked slow, the whole protocol at --quick size. The measures are in
test_evaluate_measures.py, the folder and stopping in test_evaluate_folder.py."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from conftest import read_shards, run_cli

from cmac_core.config import ConfigError, preset
from cmac_core.evaluate.arms import ArmError, arm, derangement, shuffled_audio_copy
from cmac_core.evaluate.config import EvaluateConfig
from cmac_core.evaluate.protocol import BENCHMARK_AUGMENT, train_config
from cmac_core.evaluate.report import _other_boxes, _probe_ceiling, table


def test_the_lla_arm_trains_with_lla_preset_at_the_evaluation_sizes(tmp_path):
    cfg = EvaluateConfig(out_dir=str(tmp_path), preset="tiny", steps=30, batch_size=16, crop_px=112)
    lla = train_config(cfg, arm("lla"), 1, torch.device("cpu"))
    want = preset("tiny", method="lla")
    assert lla.loss.method == "lla"
    assert lla.data.clip_frames == want.data.clip_frames != preset("tiny").data.clip_frames
    assert lla.data.sync_shift_min_s == want.data.sync_shift_min_s > 0
    assert lla.model.coattention_layers == want.model.coattention_layers
    assert lla.model.coattention_heads == want.model.coattention_heads
    assert (lla.data.crop_px, lla.optim.batch_size, lla.optim.steps, lla.optim.seed) == (
        112, 16, 30, 1
    )  # fmt: skip
    cmac = train_config(cfg, arm("cmac"), 0, torch.device("cpu"))
    assert cmac.loss.method == "cmac" and cmac.data.clip_frames == preset("tiny").data.clip_frames
    assert cmac.data.crop_px == 112 and cmac.optim.steps == 30
    assert train_config(cfg, arm("avid"), 0, torch.device("cpu")).loss.method == "avid"
    for c in (lla, cmac):  # every arm alike: whole-frame-like crops, colours as they are
        assert (
            c.data.crop_scale == BENCHMARK_AUGMENT["crop_scale"] != preset("tiny").data.crop_scale
        )
        assert c.data.color_jitter == 0.0
    assert not arm("lla").has_alpha and arm("cmac").has_alpha


def test_lla_is_opt_in(tmp_path):
    assert "lla" not in EvaluateConfig(out_dir=str(tmp_path)).arms
    assert "lla" not in EvaluateConfig(out_dir=str(tmp_path), quick=True).arms
    assert EvaluateConfig(out_dir=str(tmp_path), arms=("cmac", "lla")).arms == ("cmac", "lla")


def test_table_marks_lla_alpha_not_applicable_and_shows_chance_and_ceiling():
    stat = {"mean": 0.5, "std": 0.0, "n": 1}
    results = {
        "arms": {"cmac": {"beta_v.pointing": stat, "alpha_v.pointing": stat, "sync_2afc": stat},
                 "lla": {"beta_v.pointing": stat, "alpha_v.pointing": None, "sync_2afc": stat}},
        "baselines": {},
        "chance": {"pointing": 0.1, "pointing_mid": 0.08, "which_object": 0.5, "probe": 0.125,
                   "r_at_1": 0.01, "sync_2afc": 0.5,
                   "probe_v_ceiling": 0.5},
        "n_sync_clips": 64,
    }  # fmt: skip
    rows = {line.split("|")[1].strip(): line for line in table(results).splitlines()}
    assert "sync 2AFC (64 clips)" in rows["arm"]
    heads = [h.strip() for h in rows["arm"].split("|")[1:-1]]
    cells = {name: [c.strip() for c in rows[name].split("|")[1:-1]] for name in rows}
    assert cells["lla"][heads.index("pointing α")] == "n/a"
    assert cells["cmac"][heads.index("pointing α")] == "0.500"
    assert cells["chance"][heads.index("sync 2AFC (64 clips)")] == "0.500"
    assert cells["chance"][heads.index("which object β")] == "0.500"
    assert cells["chance"][heads.index("which object α")] == "0.500"
    assert cells["video probe ceiling"][heads.index("probe video")] == "0.500"
    assert cells["video probe ceiling"][heads.index("probe audio")] == "–"


def test_the_report_says_what_bounds_the_video_probe():
    shared = _probe_ceiling({"chance": {"probe_v_ceiling": 0.5, "visible_classes_range": [2, 2]},
                             "config": {"silent_classes": 0}})  # fmt: skip
    assert "shows objects of 2 classes" in shared and "is 0.500" in shared
    silent = _probe_ceiling({"chance": {"probe_v_ceiling": 1.0, "visible_classes_range": [1, 1]},
                             "config": {"silent_classes": 4}})  # fmt: skip
    assert "never sound" in silent and "the ceiling is 1.000" in silent


def test_report_names_arms_whose_boxes_are_not_the_baselines():
    assert _other_boxes({"other_boxes": []}) == []
    text = " ".join(_other_boxes({"other_boxes": ["lla"], "baselines_arm": "random_init"}))
    assert "boxes of random_init's clips" in text and "lla uses clips of another length" in text


def test_derangement_moves_every_index():
    for n in (2, 3, 10, 101):
        p = derangement(n, np.random.default_rng(n))
        assert sorted(p) == list(range(n))
        assert (p != np.arange(n)).all()
    with pytest.raises(ArmError):
        derangement(1, np.random.default_rng(0))


@pytest.fixture(scope="module")
def bench_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate")
    run_cli("synth", str(out / "bench"), "--videos", "6", "--test-videos", "0", "--seed", "3",
            "--workers", "2")  # fmt: skip
    run_cli("shard", str(out / "bench" / "train" / "manifest.jsonl"), "--out", str(out / "shards"),
            "--short-side", "112", "--fps", "8", "--workers", "2", "--shard-max-samples", "2",
            "--quiet")  # fmt: skip
    return out


def test_shuffled_audio_copy_moves_every_spectrogram_to_another_video(bench_shards):
    src, dst = bench_shards / "shards", bench_shards / "shuffled"
    donor = shuffled_audio_copy(src, dst, seed=0)
    before, after = read_shards(src), read_shards(dst)
    assert sorted(before) == sorted(after) == sorted(donor)  # nothing lost, nothing added
    assert sorted(donor.values()) == sorted(donor)  # a permutation: every spectrogram once
    for key, sample in after.items():
        assert donor[key].rsplit("_", 1)[0] != key.rsplit("_", 1)[0]  # another video's
        assert np.array_equal(sample["spec"], before[donor[key]]["spec"])
        assert not np.array_equal(sample["spec"], before[key]["spec"])
        # Everything else as it was, but the spectrogram's padding value (v2), which moves with it.
        moved = {**before[key]["json"], "spec_min": before[donor[key]]["json"]["spec_min"]}
        assert sample["json"] == moved and "spec_min" in before[key]["json"]
        assert sample["frames"] == before[key]["frames"]
    assert sorted(p.name for p in dst.glob("*.tar")) == sorted(p.name for p in src.glob("*.tar"))
    assert shuffled_audio_copy(src, dst, seed=0) == donor  # the same seed, the same copy


def test_the_benchmark_shards_are_the_same_for_the_same_seed(tmp_path):
    """Several shard writers race for videos (run to run, a video lands in another shard), and
    the training stream's order follows the shards: the benchmark is sharded by one writer,
    in the manifest's order, the same twice (all but input_key, which names the folder)."""
    from avprep.benchmark_shards import bench_config, benchmark_shards

    made = [benchmark_shards(tmp_path / name, bench_config(tmp_path / name, videos=8, test_videos=2, seed=5,
                                                           workers=2), log=lambda _: None)
            for name in ("a", "b")]  # fmt: skip
    for split, n in (("train", 8), ("test", 2)):
        members = [_members(m[split]) for m in made]
        assert members[0] == members[1]
        keys = [name for _, name, _ in members[0] if name.endswith(".json")]
        assert keys == [f"{split}-{i:05d}_0000.json" for i in range(n)]  # the manifest's order


def _members(shards) -> list[tuple]:
    """(shard, member, content) of every member in shard order; a json without input_key."""
    out = []
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                data = tar.extractfile(m).read()
                if m.name.endswith(".json"):
                    data = {k: v for k, v in json.loads(data).items() if k != "input_key"}
                out.append((path.name, m.name, data))
    return out


@pytest.mark.slow
def test_evaluate_quick_end_to_end(tmp_path):
    out = tmp_path / "ev"
    args = ("evaluate", str(out), "--quick", "--videos", "16", "--test-videos", "16", "--steps",
            "4", "--batch-size", "8", "--sync-clips", "12", "--arms", "random_init,avid,cmac,lla")  # fmt: skip
    proc = run_cli(*args, timeout=900)
    assert "pre-registered outcomes hold" in proc.stdout
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["arms"]) == {"random_init", "avid", "cmac", "lla"}
    assert results["n_test_clips"] == 16 and results["n_classes"] == 8
    assert results["n_sync_clips"] == 12
    for stats in results["arms"].values():
        for name in ("beta_v.pointing", "beta_v.size_aware_iou", "probe_v", "probe_a", "r_at_1",
                     "sync_2afc"):  # fmt: skip
            assert 0.0 <= stats[name]["mean"] <= 1.0
    assert results["arms"]["cmac"]["alpha_v.pointing"] is not None
    assert results["arms"]["lla"]["alpha_v.pointing"] is None  # uniform by design: n/a
    assert results["arms"]["lla"]["alpha_v.which_object"] is None
    assert 0.0 <= results["arms"]["cmac"]["alpha_v.which_object"]["mean"] <= 1.0
    for name in ("random_init", "avid", "cmac"):  # Grad-CAM: models that score pooled features
        assert 0.0 <= results["arms"][name]["gradcam_v.pointing"]["mean"] <= 1.0
    assert results["arms"]["lla"]["gradcam_v.pointing"] is None  # its sync head: n/a
    assert "avid: pointing (Grad-CAM) >= 0.8" in " ".join(c["claim"] for c in results["checks"])
    assert results["baselines"]["true_box"]["pointing"] == 1.0
    assert set(results["paired"]) == {"cmac", "lla"}  # each arm minus avid, seed by seed
    assert results["paired"]["cmac"]["beta_v.pointing"]["se"] is None  # one seed: no error
    assert results["chance"]["r_at_1"] == pytest.approx(1 / 16)
    assert results["chance"]["sync_2afc"] == 0.5
    assert results["chance"]["probe_v_ceiling"] == 0.5  # 2 objects of 2 classes in every clip
    text = (out / "report" / "RESULTS.md").read_text()
    assert "| video probe ceiling |" in text and "sync 2AFC (12 clips)" in text
    assert "ceiling here: 0.500" in text and "## Each arm minus avid, seed by seed" in text
    # lla's clips are twice as long: its boxes are not the baselines' (random_init's), and
    # the report says so; the synthetic truth bounds the 2AFC (a ceiling for every arm).
    assert results["baselines_arm"] == "random_init" and results["other_boxes"] == ["lla"]
    assert "lla uses clips of another length" in " ".join(text.split())
    assert all(0.5 <= s["sync_ceiling"]["mean"] <= 1.0 for s in results["arms"].values())
    lla_run = json.loads((out / "runs" / "lla-s0" / "config.json").read_text())
    assert lla_run["loss"]["method"] == "lla" and lla_run["data"]["sync_shift_min_s"] > 0
    assert {c["claim"].split(":")[0] for c in results["checks"]} >= {"avid", "cmac", "random_init"}
    for name in ("RESULTS.md", "results_curves.png", "results_maps.png"):
        assert (out / "report" / name).stat().st_size > 0
    trained = json.loads((out / "timings.json").read_text())
    assert "train avid-s0" in trained and "train lla-s0" in trained
    assert "sync 2afc lla-s0" in trained
    again = run_cli(*args)
    assert "training" not in again.stderr  # a rerun reuses every finished arm
    assert "2AFC" not in again.stderr and "features of" not in again.stderr
    assert json.loads((out / "report" / "results.json").read_text())["arms"] == results["arms"]
    # trained for 4 steps: a rerun that says 5 would report them under the wrong settings
    other = run_cli(*args, "--steps", "5", check=False)
    assert other.returncode == 2 and "made with --steps 4, not 5" in other.stderr
    assert json.loads((out / "evaluate.json").read_text())["steps"] == 4
    # the folder's benchmark is 112 px: one of another size is refused before anything runs
    other = run_cli(*args, "--size", "160", check=False)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines() == [
        f"avprep: error: {out} holds a benchmark made with --size 112, not 160: use a new "
        "folder (its runs and features belong to it)"
    ]


def test_evaluate_sizes_follow_the_benchmark_frame():
    cfg = EvaluateConfig(out_dir="x", frame_px=160, object_px=40)
    assert cfg.crop_px == 160  # the whole frame unless told otherwise
    assert EvaluateConfig(out_dir="x", frame_px=160, crop_px=112).crop_px == 112
    with pytest.raises(ConfigError) as e:
        EvaluateConfig(out_dir="x", frame_px=100)
    assert e.value.cli == "--size must be a multiple of 16 (the grid), got 100"
    with pytest.raises(ConfigError) as e:
        EvaluateConfig(out_dir="x", object_px=8)
    assert e.value.cli == "--object-size must be an integer in 32..256, got 8"


def _stats(**means) -> dict:
    return {k.replace("__", "."): {"mean": v, "std": 0.01, "n": 2} for k, v in means.items()}


def test_paired_differences_are_taken_seed_by_seed():
    from cmac_core.evaluate import paired

    def seeds(*pointing):
        return [{"beta_v.pointing": p, "beta_v.size_aware_iou": 0.5, "gradcam_v.pointing": p}
                for p in pointing]  # fmt: skip

    # Seeds far apart, the arm always 0.05 above avid on the same seed: the difference is
    # known exactly although each arm's own spread is 0.2.
    per_seed = {"random_init": seeds(0.1, 0.2, 0.3), "avid": seeds(0.5, 0.7, 0.9),
                "cmac": seeds(0.55, 0.75, 0.95), "lla": seeds(0.4, 0.6, 0.8)}  # fmt: skip
    for s in per_seed["lla"]:
        s["gradcam_v.pointing"] = None  # lla: no Grad-CAM
    d = paired.paired(per_seed)
    assert set(d) == {"cmac", "lla"}  # not avid against itself, not the untrained arm
    assert d["cmac"]["beta_v.pointing"]["mean"] == pytest.approx(0.05)
    assert d["cmac"]["beta_v.pointing"]["se"] == pytest.approx(0.0, abs=1e-12)
    assert d["cmac"]["beta_v.pointing"]["n"] == 3
    assert d["lla"]["beta_v.pointing"]["mean"] == pytest.approx(-0.1)
    assert "gradcam_v.pointing" not in d["lla"] and "gradcam_v.size_aware_iou" not in d["cmac"]
    spread = {"avid": seeds(0.5, 0.7), "cmac": seeds(0.6, 0.7)}  # differences 0.1 and 0.0
    assert paired.paired(spread)["cmac"]["beta_v.pointing"]["se"] == pytest.approx(0.05)
    assert paired.paired({"cmac": seeds(0.5)}) == {}  # nothing to compare with
    lines = paired.markdown(d)
    assert "| cmac − avid | +0.050 ± 0.000 | +0.000 ± 0.000 | +0.050 ± 0.000 | – |" in lines
    assert "| lla − avid | -0.100 ± 0.000 | +0.000 ± 0.000 | – | – |" in lines
    assert paired.markdown({}) == []


def test_training_curves_give_each_seed_its_own_colour_and_label():
    from cmac_core.evaluate import pictures

    def recs(seed):
        return [{"step": k, "loss": 3.0 - k / 10 + seed} for k in range(0, 11, 5)]

    img = pictures.curves({"avid": {s: recs(s) for s in range(7)}})  # 7 seeds: 2 legend rows
    assert img.height == pictures.PANEL_H + 2 * pictures.MARGIN + 2 * pictures.LEGEND_ROW_H
    colours = {c for _, c in img.getcolors(1 << 20)}
    assert all(c in colours for c in pictures.SEED_COLOURS[:7])  # seed 5 no longer seed 0's blue


def test_preregistered_checks_read_the_figures():
    from cmac_core.evaluate.summary import checks

    learned = _stats(beta_v__pointing=0.9, beta_v__size_aware_iou=0.6, probe_v=0.9, probe_a=0.9,
                     r_at_1=0.5, alpha_v__pointing=0.7)  # fmt: skip
    chance_like = _stats(beta_v__pointing=0.13, beta_v__size_aware_iou=0.1, probe_v=0.25,
                         probe_a=0.97, r_at_1=0.01, alpha_v__pointing=0.1)  # fmt: skip
    arms = {"avid": learned, "cmac": learned, "random_init": chance_like}
    base = {"centre_prior": {"pointing": 0.0, "size_aware_iou": 0.05}}
    ch = {"pointing": 0.13, "probe": 0.25, "r_at_1": 0.01}
    held = {c["claim"]: c["holds"] for c in checks(arms, base, ch)}
    assert (
        held["avid: pointing (beta_v) >= 0.8"]
        and held["cmac: class probe on video features >= 0.65"]
    )
    assert held["avid: size-aware IoU beats centre prior and random init by > 2x seed spread"]
    # random init's audio probe (0.97) is far above chance: the claim does not hold
    assert not held["random_init: near chance (at most 0.1 above) on every measure"]
    assert held[
        "centre prior: pointing near chance (at most 0.1 above)"
    ]  # below chance is no learning
    assert not held["goal, CMAC adds value: beta size-aware IoU >= avid's + 0.05"]
    # lla's goals, against the baselines of its own clips where given
    arms["lla"] = {**chance_like, "sync_2afc": {"mean": 0.93, "std": 0.0}}
    own = {"centre_prior": {"pointing": 0.2, "size_aware_iou": 0.1}}
    held = {c["claim"]: c["holds"] for c in checks(arms, base, ch, lla_base=own)}
    assert held["goal, lla: synchronization 2AFC >= 0.9"]
    assert not held["goal, lla: pointing (beta_v) above the centre prior's, on lla's clips"]
    assert not held["goal, lla: class probe on video features well above chance (>= 2x chance)"]
    arms["lla"]["sync_2afc"] = {"mean": 0.45, "std": 0.0}
    held = {c["claim"]: c["holds"] for c in checks(arms, base, ch)}
    assert not held["goal, lla: synchronization 2AFC >= 0.9"]
    assert held["goal, lla: pointing (beta_v) above the centre prior's, on lla's clips"]


def test_the_target_arms_change_only_their_targets(tmp_path):
    """cmac_momentum and cmac_sharp are cmac with its targets from a momentum copy, or at
    half the temperature; nothing else differs."""
    cfg = EvaluateConfig(out_dir=str(tmp_path), preset="tiny", steps=30, batch_size=16, crop_px=112)
    cmac = train_config(cfg, arm("cmac"), 0, torch.device("cpu"))
    sharp = train_config(cfg, arm("cmac_sharp"), 0, torch.device("cpu"))
    momentum = train_config(cfg, arm("cmac_momentum"), 0, torch.device("cpu"))
    assert cmac.loss.target_temperature == preset("tiny").loss.target_temperature == 0.1
    assert sharp.loss.target_temperature == 0.05
    assert sharp.replace("loss", target_temperature=0.1) == cmac
    assert momentum.loss.target_momentum == 0.99 and momentum.loss.target_temperature == 0.1
    assert momentum.replace("loss", target_momentum=0.0) == cmac
