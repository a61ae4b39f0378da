"""The protocol: train every arm with every seed, extract frozen features, measure, report.

``evaluate(cfg, train_shards=..., test_shards=...)`` takes the shards of an ``avprep
synth`` benchmark (the ``avprep evaluate`` command makes them first: cmac_core does not
import avprep's synthesis or sharding) and writes under ``cfg.out_dir``::

    runs/{arm}-s{seed}/          pretrain run folders (config.json, metrics.jsonl, last.pt)
    shards/train_shuffled/       the shuffled-audio control's training shards
    features/{arm}-s{seed}-{split}.npz   frozen features, maps and truth (features.py)
    features/{arm}-s{seed}-sync.json     the synchronization 2AFC on the first
                                 ``cfg.sync_clips`` test clips (``cmac_core.sync_2afc``)
    timings.json                 seconds per stage, over every run that worked on it
                                 (``avprep.stage_timings``)
    evaluate.json                the training settings the runs belong to (folder.py)

Resumable: a finished run, shuffled copy, feature or 2AFC file is reused, never redone
(a feature file without today's truth arrays is made again); a run cut short goes on from
its last checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from avprep.stage_timings import StageTimings
from cmac_core.config import PretrainConfig, preset
from cmac_core.distributed import wants_cuda
from cmac_core.evaluate import features, folder
from cmac_core.evaluate.arms import Arm, arm, shuffled_audio_copy
from cmac_core.evaluate.config import EvaluateConfig
from cmac_core.evaluate.summary import summarize
from cmac_core.sync_2afc import sync_2afc
from cmac_core.train import pretrain


@dataclass
class EvaluateResult:
    results: dict  # what results.json holds
    report_dir: Path


def device_of(name: str) -> torch.device:
    """``auto``: CUDA when present; a named CUDA device that is not here: DeviceError."""
    if not wants_cuda(name):
        return torch.device("cpu")
    return torch.device("cuda" if name == "auto" else name)


def prepare(cfg: EvaluateConfig, report_dir: str | Path | None = None) -> None:
    """Refuse, in one line and before anything is written, a device that is not here or a
    folder that is not this evaluation's (``folder.check``)."""
    folder.check(cfg, device_of(cfg.device), None if report_dir is None else Path(report_dir))


# The benchmark's augmentation, for every arm alike: a class is a colour and a shape at one
# object size, and the maps are measured on whole frames; the presets' crops of 30-100% of
# the frame (objects up to 1.8x larger than ever evaluated) and saturation jitter blur
# both. Measured (avid, tiny, 500 steps, 1 seed, docs/RESULTS.md): pointing against the box
# over the clip 0.53 with the presets' augmentation, 0.74 with this.
BENCHMARK_AUGMENT = {"crop_scale": (0.8, 1.0), "color_jitter": 0.0}


def train_config(cfg: EvaluateConfig, a: Arm, seed: int, device: torch.device) -> PretrainConfig:
    """The arm's pretraining config: the preset of the arm's method (base on a GPU with
    ``auto``; lla's has its own clip length and co-attention, ``config.LLA_CHANGES``) at
    the evaluation's crop, batch and steps, ``BENCHMARK_AUGMENT``, the arm's negatives, the seed."""
    c = preset(cfg.preset_name(device.type), method=a.method)
    c = c.replace("data", crop_px=cfg.crop_px, **BENCHMARK_AUGMENT)
    c = c.replace(
        "loss", within_modal_negatives=a.within_modal_negatives, target_momentum=a.target_momentum
    )
    if a.target_temperature is not None:
        c = c.replace("loss", target_temperature=a.target_temperature)
    return c.replace("optim", steps=cfg.steps, batch_size=cfg.batch_size, seed=seed,
                     save_every_steps=max(1, cfg.steps // 4), log_every_steps=max(1, cfg.steps // 60),
                     workers=1 if device.type == "cpu" else 4)  # fmt: skip


def evaluate(cfg: EvaluateConfig, *, train_shards: str | Path, test_shards: str | Path,
             report_dir: str | Path | None = None, command: str = "",
             on_event: Callable[[str], None] | None = None) -> EvaluateResult:  # fmt: skip
    """Run the protocol (module docstring); the report goes to ``report_dir`` (default
    ``out_dir/report``): RESULTS.md, results.json and the pictures."""
    from cmac_core.evaluate.report import write_report  # noqa: PLC0415 (PIL only here)

    say = on_event or (lambda _: None)
    out = Path(cfg.out_dir)
    device = device_of(cfg.device)
    folder.check(cfg, device, None if report_dir is None else Path(report_dir))
    folder.record(cfg, device)
    timings = StageTimings(out / "timings.json")
    shuffled = out / "shards" / "train_shuffled"
    if any(arm(n).shuffled_audio for n in cfg.arms) and not (shuffled / ".done").exists():
        with timings.timed("shuffled_audio_copy"):
            shuffled_audio_copy(train_shards, shuffled, seed=cfg.bench_seed)
            (shuffled / ".done").write_text("")
    runs: dict[str, dict[int, dict]] = {}
    for seed in range(cfg.seeds):  # seed 0 of every arm first: a whole table soonest
        for name in cfg.arms:
            a = arm(name)
            tag = f"{name}-s{seed}"
            pc = train_config(cfg, a, seed, device)
            run_dir = out / "runs" / tag
            if a.trained:
                done = (run_dir / "last.pt").exists() and timings.done(f"train {tag}")
                if not done:
                    say(f"evaluate: training {tag} ({cfg.steps} steps)")
                    with timings.timed(f"train {tag}"):
                        pretrain(str(shuffled if a.shuffled_audio else train_shards), run_dir, pc,
                                 resume=(run_dir / "last.pt").exists(), complete_ok=True,
                                 device=device.type, show_progress=False)  # fmt: skip
            runs.setdefault(name, {})[seed] = {
                split: _features(
                    out, tag, split, a, pc, run_dir, seed, device, shards, timings, say
                )
                for split, shards in (("train", train_shards), ("test", test_shards))
            }
            runs[name][seed]["sync"] = _sync(out, tag, a, pc, run_dir, seed, device, test_shards,
                                             cfg.sync_clips, timings, say)  # fmt: skip
            runs[name][seed]["metrics"] = _metrics(run_dir / "metrics.jsonl")
    say("evaluate: measuring")
    results = summarize(cfg, runs, timings=timings.data, command=command, device=device)
    report = Path(report_dir) if report_dir is not None else out / "report"
    write_report(results, runs, report)
    return EvaluateResult(results, report)


def _features(out: Path, tag: str, split: str, a: Arm, pc: PretrainConfig, run_dir: Path,
              seed: int, device: torch.device, shards, timings: StageTimings, say) -> dict:  # fmt: skip
    path = out / "features" / f"{tag}-{split}.npz"
    if path.exists():
        arrays = features.load(path)
        if set(features.TRUTH) <= set(arrays):
            return arrays
    say(f"evaluate: features of {tag} on {split}")
    with timings.timed(f"features {tag} {split}"):
        frozen = _frozen(a, pc, run_dir, seed, device)
        arrays = features.extract(frozen, shards, maps=split == "test",
                                  keep_frames=8 if split == "test" else 0)  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        features.save(path, arrays)
    return arrays


def _frozen(a: Arm, pc: PretrainConfig, run_dir: Path, seed: int, device: torch.device):
    if a.trained:
        return features.Frozen.load(run_dir / "last.pt", device)
    return features.random_init(pc, seed=seed, device=device)


def _sync(out: Path, tag: str, a: Arm, pc: PretrainConfig, run_dir: Path, seed: int,
          device: torch.device, shards, clips: int, timings: StageTimings, say) -> dict:  # fmt: skip
    """``{"correct", "clips", "skipped", "decidable"}`` of the synchronization 2AFC (chance
    0.5) on the first ``clips`` test clips: lla by its sync head, the others by ``z_v . z_a``;
    ``decidable``: the pairs the synthetic truth tells apart (the ceiling, sync_2afc.py)."""
    path = out / "features" / f"{tag}-sync.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found.get("limit") == clips:
            return found
    say(f"evaluate: synchronization 2AFC of {tag}")
    with timings.timed(f"sync 2afc {tag}"):
        choice = sync_2afc(_frozen(a, pc, run_dir, seed, device), str(shards), limit=clips)
        found = {"correct": choice.correct, "clips": choice.clips, "skipped": choice.skipped,
                 "decidable": choice.decidable, "limit": clips}  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(found))
        os.replace(tmp, path)
    return found


def _metrics(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (none for an untrained arm)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
