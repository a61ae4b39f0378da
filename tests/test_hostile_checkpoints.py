"""Checkpoints and configs from strangers: refused in one line, before anything big is built."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

from cmac_core import config as cmac_config
from cmac_core.checkpoint import CheckpointError, check_state_dict, first_line

ENV = {"OMP_NUM_THREADS": "1"}


def _one_line(proc, *texts: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(t in lines[0] for t in texts), proc.stderr[-3000:]
    assert "\x1b" not in proc.stderr and "Traceback" not in proc.stderr
    return lines[0]


def _embed(demo_shards, ckpt, out):
    return run_cli("embed", str(demo_shards), "--ckpt", str(ckpt), "--out", str(out),
                   "--device", "cpu", check=False, env=ENV)  # fmt: skip


def _with_config(tiny_ckpt, path, section: str, **changes):
    """The tiny checkpoint's weights under a config with ``changes`` (not validated here)."""
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["config"][section].update(changes)
    torch.save(ckpt, path)
    return path


def test_a_pickled_module_is_one_clean_line_and_never_loaded(demo_shards, tmp_path):
    """torch.save of a whole nn.Module: torch's message has ANSI codes and advice to load it
    unsafely; the user sees one plain line saying why it was not loaded."""
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    emb = tmp_path / "emb"
    line = _one_line(_embed(demo_shards, pickled, emb), "not a plain-data checkpoint",
                     "loading it would run code (pickle)", "torch.nn.modules.linear.Linear")  # fmt: skip
    assert "weights_only" not in line and "trust" not in line
    assert not emb.exists()


def test_first_line_strips_terminal_escapes():
    assert first_line("\x1b[1mdo this\x1b[0m now\x07\n\tsecond line") == "do this now"
    assert first_line("\n\n  \x1b]0;title\x07x") == "x"
    assert len(first_line("a" * 1000)) == 160


def test_a_huge_config_is_refused_before_the_model_is_built(demo_shards, tiny_ckpt, tmp_path):
    """A few-MB file whose config asks for widths 8192 and 64 blocks per stage (terabytes):
    its size is estimated on the meta device and refused against the memory free."""
    huge = _with_config(tiny_ckpt, tmp_path / "huge.pt", "model",
                        video_widths=[8192] * 4, video_blocks=[64] * 4,
                        audio_widths=[8192] * 4, audio_blocks=[64] * 4)  # fmt: skip
    assert huge.stat().st_size < 10 * 2**20
    emb = tmp_path / "emb"
    _one_line(_embed(demo_shards, huge, emb), f"{huge}: its config makes a model of",
              "GiB of memory free on cpu; not loaded")  # fmt: skip
    assert not emb.exists()


def test_a_huge_config_is_refused_before_pretrain_builds_it(demo_shards, tmp_path):
    """The same widths and blocks in a config file (within its bounds): pretrain built the
    model and died in torch's allocator after 46 s (a traceback). Its size with gradients and
    AdamW's moments is estimated on the meta device first, as embed's is."""
    cfg = cmac_config.preset("tiny").to_dict()
    cfg["model"].update(video_widths=[8192] * 4, video_blocks=[64] * 4,
                        audio_widths=[8192] * 4, audio_blocks=[64] * 4)  # fmt: skip
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", str(path),
                   "--steps", "2", "--device", "cpu", check=False, env=ENV)  # fmt: skip
    _one_line(proc, "the config makes a model of", "with its gradients and optimizer state",
              "GiB of memory free on cpu: lower the model's widths or blocks")  # fmt: skip
    assert not run.exists()


def test_clips_larger_than_memory_are_refused_in_one_line(demo_shards, tiny_ckpt, tmp_path):
    """Clips of 1024 frames at 4096 px (the data config's bounds; 192 GiB a clip as float32):
    pretrain died in the loader's shared memory, localize in F.interpolate (a traceback each),
    embed called every sample damaged. The clips a command holds at once (a batch; localize's
    one) are estimated with the model (``checkpoint.too_big``) and refused in one line
    before a shard is read."""
    from cmac_core.checkpoint import available_bytes, clip_bytes
    from cmac_core.config import DataConfig

    huge = {"clip_frames": 1024, "crop_px": 4096}
    free = available_bytes(torch.device("cpu"))
    if free is None or free > clip_bytes(DataConfig(**huge), 1):
        pytest.skip("this machine's free memory is unknown, or holds a 192 GiB clip")
    run = tmp_path / "run"
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", "tiny",
                   "--steps", "2", "--device", "cpu", "--set", "data.clip_frames=1024",
                   "--set", "data.crop_px=4096", check=False, env=ENV)  # fmt: skip
    _one_line(proc, "the config makes a model of", "and clips of 1024 frames at 4096 px",
              "GiB of memory free on cpu")  # fmt: skip
    assert not run.exists()
    ckpt = _with_config(tiny_ckpt, tmp_path / "huge-clips.pt", "data", **huge)
    for command, clips in (("embed", 64), ("localize", 1)):
        out = tmp_path / command
        proc = run_cli(command, str(demo_shards), "--ckpt", str(ckpt), "--out", str(out),
                       "--device", "cpu", check=False, env=ENV)  # fmt: skip
        _one_line(proc, f"{ckpt}: its config makes a model of",
                  f"and clips of 1024 frames at 4096 px, {clips} at a time", "; not loaded")  # fmt: skip
        assert not out.exists()


def test_weights_of_another_shape_are_refused_without_building_the_model(tiny_ckpt, tmp_path):
    """A config of a 2.3 GB model with the tiny model's weights: the mismatch is found on the
    meta device, so the process never holds the model (its peak memory says so)."""
    big = _with_config(tiny_ckpt, tmp_path / "big.pt", "model",
                       video_widths=[8, 16, 32, 4096], audio_widths=[8, 16, 32, 4096])  # fmt: skip
    code = (
        "import resource, sys, torch\n"
        "from cmac_core.checkpoint import CheckpointError\n"
        "from cmac_core.embed import Frozen\n"
        "try:\n"
        f"    Frozen.load({str(big)!r}, torch.device('cpu'))\n"
        "except CheckpointError as e:\n"
        "    print(e)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ENV})  # fmt: skip
    message, peak = proc.stdout.strip().splitlines()
    assert f"{big}: weight " in message and "the weights are not of this config's model" in message
    assert int(peak) < 1.5 * 2**30, proc.stdout  # the model alone would be 2.3 GiB


def test_check_state_dict_names_the_first_problem(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    good = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    check_state_dict(model, good, "ok.pt")
    cases = [({**good, "0.weight": torch.zeros(4, 5)}, "weight '0.weight' has shape [4, 5], its model's has [4, 3]"),
             ({k: v for k, v in good.items() if k != "1.bias"}, "1 missing (e.g. '1.bias')"),
             ({**good, "\x1b[31mx": torch.zeros(1)}, "1 unknown (e.g. '\\x1b[31mx')"),
             ({**good, "0.bias": [0.0] * 4}, "weight '0.bias' is list, not a tensor"),
             ([1, 2], "its model weights are list, not a state dict")]  # fmt: skip
    for state, text in cases:
        with pytest.raises(CheckpointError, match="x.pt: ") as e:
            check_state_dict(model, state, "x.pt")
        assert text in str(e.value) and "\x1b" not in str(e.value)


# -- configs: every field bounded, in a config file and in a checkpoint -------------------

BAD_VALUES = [
    ("model", {"embed_dim": 0}, "model.embed_dim must be an integer >= 1"),
    ("model", {"video_widths": [10**6] * 4, "audio_widths": [10**6] * 4}, "model.video_widths must be integers"),
    ("model", {"video_blocks": [10**5] * 4}, "model.video_blocks must be integers >= 1 and <= 64"),
    ("model", {"head_hidden": 2.5}, "model.head_hidden must be an integer"),
    ("data", {"shuffle_buffer": -1}, "data.shuffle_buffer must be an integer >= 0"),
    ("data", {"flip_p": 5}, "data.flip_p must be a finite number >= 0 and <= 1, got 5"),
    ("data", {"spec_mean": float("nan")}, "data.spec_mean must be a finite number"),
    ("data", {"crop_scale": [0.5, float("inf")]}, "data.crop_scale must be finite numbers > 0 and <= 1"),
    ("data", {"color_jitter": 3}, "data.color_jitter must be a finite number >= 0 and <= 1"),
    ("loss", {"attention_warmup_steps": -5}, "loss.attention_warmup_steps must be an integer >= 0"),
    ("loss", {"nce_temperature": 0}, "loss.nce_temperature must be a finite number > 0"),
    ("loss", {"within_modal_negatives": "yes"}, "loss.within_modal_negatives must be true or false"),
    ("optim", {"warmup_steps": -1}, "optim.warmup_steps must be an integer >= 0"),
    ("optim", {"lr": float("inf")}, "optim.lr must be a finite number > 0"),
    ("optim", {"batch_size": 10**6}, "optim.batch_size must be an integer >= 2 and <= 65536"),
    ("optim", {"workers": 10**4}, "optim.workers must be an integer >= 0 and <= 256"),
    ("optim", {"grad_clip": -1.0}, "optim.grad_clip must be a finite number >= 0"),
]  # fmt: skip


def test_every_config_field_is_checked():
    """A field added without a bound would be accepted whatever its value."""
    for kind in (cmac_config.ModelConfig, cmac_config.DataConfig, cmac_config.LossConfig,
                 cmac_config.OptimConfig):  # fmt: skip
        for f in dataclasses.fields(kind):
            assert f.type in ("bool", "str") or f.name in kind.BOUNDS, (kind.__name__, f.name)
    for section, changes, text in BAD_VALUES:
        with pytest.raises(cmac_config.ConfigError, match="^" + text.replace("(", r"\(")[:30]):
            cmac_config.preset("tiny").replace(section, **changes)
    for name in ("tiny", "base"):
        assert cmac_config.PretrainConfig.from_dict(cmac_config.preset(name).to_dict())


def test_a_config_file_with_values_that_make_no_sense(demo_shards, tmp_path):
    for i, (section, changes, text) in enumerate(BAD_VALUES):
        cfg = cmac_config.preset("tiny").to_dict()
        cfg[section].update(changes)
        path = tmp_path / f"bad-{i}.json"
        path.write_text(json.dumps(cfg))  # NaN and Infinity as Python's json writes them
        run = tmp_path / f"run-{i}"
        proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", str(path),
                       "--steps", "2", "--device", "cpu", check=False, env=ENV)  # fmt: skip
        _one_line(proc, text)
        assert not run.exists()


def test_a_checkpoint_whose_config_makes_no_sense(demo_shards, tiny_ckpt, tmp_path):
    for i, (section, changes, text) in enumerate(BAD_VALUES[:3]):
        path = _with_config(tiny_ckpt, tmp_path / f"bad-{i}.pt", section, **changes)
        emb = tmp_path / f"emb-{i}"
        _one_line(_embed(demo_shards, path, emb), f"{path}: its config is not valid ({text}")
        assert not emb.exists()
    bad = tmp_path / "sections.pt"
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    torch.save({**ckpt, "config": {"model": [1, 2]}}, bad)
    _one_line(
        _embed(demo_shards, bad, tmp_path / "e"), f"{bad}: its config is not a cmac_core config"
    )
    torch.save({**ckpt, "arch": "\x1b[2Jevil"}, bad)
    _one_line(
        _embed(demo_shards, bad, tmp_path / "e"), f"{bad}: unknown architecture '\\x1b[2Jevil'"
    )


def test_a_compressed_checkpoint_that_expands_past_its_file_is_never_loaded(
    demo_shards, tiny_ckpt, tmp_path
):  # fmt: skip
    """A few MB that load as gigabytes: the tiny checkpoint plus 256 MB of zeros in its
    metrics, its zip records deflated (torch.load reads them; torch.save never writes
    them so). Refused in one line before torch.load allocates anything."""
    import zipfile

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["metrics"] = {"junk": torch.zeros(256 << 20, dtype=torch.uint8)}
    plain, bomb = tmp_path / "plain.pt", tmp_path / "bomb.pt"
    torch.save(ckpt, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    plain.unlink()
    assert bomb.stat().st_size < 8 << 20  # deflated: under 8 MB on disk
    line = _one_line(_embed(demo_shards, bomb, tmp_path / "emb"), "bomb.pt was not loaded",
                     "expand to", "uncompressed")  # fmt: skip
    assert line.startswith("avprep: error: ")
    assert not any((tmp_path / "emb").glob("*.parquet"))  # nothing written
