"""Pretrain configs as YAML or JSON files with dotted --set overrides: the parser's types
and errors, and real CLI runs that save the resolved config and check it on --resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import run_cli

from cmac_core.config import ConfigError, preset
from cmac_core.config_files import load, parse_overrides

ENV = {"OMP_NUM_THREADS": "1"}


def test_overrides_are_typed_as_their_fields():
    got = parse_overrides([
        "model.embed_dim=64", "optim.steps=1e3", "optim.lr=1e-3", "optim.grad_clip=2",
        "model.coattention_self=no", "optim.compile=True", "data.crop_scale=0.5,1",
        "model.video_widths=[8, 16, 32, 64]", "data.spec_mean=none", "data.spec_std=null",
        "data.spec_preset=avid", "loss.method = avid",
    ])  # fmt: skip
    assert got == {
        "model.embed_dim": 64, "optim.steps": 1000, "optim.lr": 0.001, "optim.grad_clip": 2.0,
        "model.coattention_self": False, "optim.compile": True, "data.crop_scale": [0.5, 1.0],
        "model.video_widths": [8, 16, 32, 64], "data.spec_mean": None, "data.spec_std": None,
        "data.spec_preset": "avid", "loss.method": "avid",
    }  # fmt: skip
    assert type(got["optim.steps"]) is int and type(got["optim.grad_clip"]) is float
    cfg = load("tiny", overrides=got)
    assert cfg.model.embed_dim == 64 and cfg.data.crop_scale == (0.5, 1.0)
    assert cfg.model.video_widths == (8, 16, 32, 64) and cfg.loss.method == "avid"
    assert cfg.model.video_blocks == (1, 1, 1, 1)  # the rest is the preset's
    assert load("tiny", overrides={}) == preset("tiny")


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["embed_dim=64"], "an override is section.field=value (as model.embed_dim=64), got 'embed_dim=64'"),
        (["model.embed_dim"], "an override is section.field=value"),
        (["modle.embed_dim=64"], "unknown config section 'modle' in modle.embed_dim (model, data, loss, optim)"),
        (["model.embedd_dim=64"], "unknown setting model.embedd_dim (did you mean model.embed_dim?)"),
        (["optim.zzz=1"], "unknown setting optim.zzz (optim has lr, weight_decay,"),
        (["model.embed_dim=wide"], "model.embed_dim must be an integer, got 'wide'"),
        (["model.embed_dim=64.5"], "model.embed_dim must be an integer, got '64.5'"),
        (["optim.lr=fast"], "optim.lr must be a number, got 'fast'"),
        (["optim.compile=maybe"], "optim.compile must be true or false, got 'maybe'"),
        (["data.crop_scale=0.5,big"], "data.crop_scale must be a number, got 'big'"),
        (["optim.lr=1", "optim.lr=2"], "optim.lr is given twice; give each setting once"),
    ],
)  # fmt: skip
def test_override_text_errors_name_the_key(items, message):
    with pytest.raises(ConfigError) as e:
        parse_overrides(items)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["model.embed_dim=0"], "model.embed_dim must be an integer >= 1 and <= 8192, got 0"),
        (["optim.lr=inf"], "optim.lr must be a finite number > 0 and <= 10, got inf"),
        (["data.crop_scale=0.5"], "data.crop_scale must be a list of 2 numbers, got [0.5]"),
        (["data.crop_scale=0.9,0.5"], "data.crop_scale must be (smallest, largest)"),
        (["loss.method=simclr"], "loss.method must be one of cmac, avid, lla, got 'simclr'"),
        (["data.spec_mean=-5"], "data.spec_mean and data.spec_std: give both, or neither"),
    ],
)  # fmt: skip
def test_overrides_are_checked_by_the_config_validation(items, message):
    with pytest.raises(ConfigError) as e:
        load("tiny", overrides=parse_overrides(items))
    assert str(e.value).startswith(message)


def test_yaml_and_json_files_load_as_one_config(tmp_path):
    cfg = preset("tiny").to_dict()
    cfg["model"]["embed_dim"] = 16
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    text = yaml.safe_dump(cfg).replace("lr: 0.001", "lr: 1e-3")  # YAML 1.1 reads 1e-3 as text
    assert "lr: 1e-3" in text
    (tmp_path / "c.yaml").write_text(text)
    from_json, from_yaml = load(str(tmp_path / "c.json")), load(str(tmp_path / "c.yaml"))
    assert from_json == from_yaml and from_yaml.optim.lr == 0.001
    assert from_yaml.model.embed_dim == 16 and from_yaml.data.crop_scale == (0.3, 1.0)
    # A partial file: what it leaves out is the defaults (base's); overrides come last.
    (tmp_path / "p.yml").write_text("optim:\n  steps: 5\n  compile: yes\n")
    part = load(str(tmp_path / "p.yml"), method="avid", overrides={"optim.steps": 7})
    assert part.optim.steps == 7 and part.optim.compile is True and part.loss.method == "avid"
    assert part.model == preset("base").model
    bad = {
        "list.yaml": ("- 1\n- 2\n", "not a cmac_core config"),
        "broken.yaml": ("model: [1, 2\n", "not YAML ("),
        "unknown.yaml": ("model:\n  width: 64\n", "unknown model settings: ['width']"),
        "typed.yaml": ("optim:\n  lr: fast\n", "optim.lr must be a number, got 'fast'"),
        "range.yaml": ("optim:\n  batch_size: 1\n", "optim.batch_size must be an integer >= 2"),
    }
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
            load(str(tmp_path / name))


def test_a_bad_setting_is_one_line_before_torch_is_imported(tmp_path):
    run = tmp_path / "run"
    code = (
        "import sys\nfrom avprep.cli import main\nsys.argv = ['avprep', 'pretrain', "
        f"{str(tmp_path / 'no-shards')!r}, '--out', {str(run)!r}, '--config', 'tiny', "
        "'--set', 'model.embedd_dim=64']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[:2] == ["exit 2", "torch imported: False"], proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "avprep: error: unknown setting model.embedd_dim (did you mean model.embed_dim?)"
    ]
    assert not run.exists()


def test_settings_given_twice_or_badly_stop_before_the_shards_are_read(tmp_path):
    cases = {
        ("--set", "optim.steps=4", "--steps", "3"): "optim.steps is given by both --steps and --set",
        ("--set", "loss.method=avid", "--method", "cmac"): "loss.method is given by both --method and --set",
        ("--set", "optim.lr=0"): "optim.lr must be a finite number > 0",
        ("--set", "data.crop_px"): "an override is section.field=value",
        ("--set", "optim.steps=2", "--set", "optim.steps=3"): "optim.steps is given twice",
    }  # fmt: skip
    for args, message in cases.items():
        proc = run_cli("pretrain", str(tmp_path / "no-shards"), "--out", str(tmp_path / "run"),
                       "--config", "tiny", *args, check=False, env=ENV)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_yaml_config_with_overrides_is_saved_resolved_and_checked_on_resume(demo_shards, tmp_path):
    cfg = preset("tiny").to_dict()
    cfg["optim"]["save_every_steps"] = 2
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", str(tmp_path / "tiny.yaml"),
            "--set", "model.embed_dim=16", "--set", "optim.steps=2", "--set", "data.crop_scale=0.5,1",
            "--set", "optim.lr=5e-4", "--device", "cpu", env=ENV)  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["embed_dim"] == 16 and saved["data"]["crop_scale"] == [0.5, 1.0]
    assert saved["optim"]["steps"] == 2 and saved["optim"]["lr"] == 0.0005
    assert saved["model"]["video_widths"] == [8, 16, 32, 64]  # the file's, not base's
    assert saved["data"]["spec_mean"] is not None  # resolved: the numbers the run used
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["config"] == saved and ckpt["step"] == 2

    def files():
        return {p.name: p.read_bytes() for p in run.iterdir()
                if p.is_file() and not p.name.startswith(".lock")}  # fmt: skip

    before = files()
    proc = run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", str(run / "config.json"),
                   "--set", "optim.steps=4", "--set", "model.embed_dim=32", "--resume", "--device", "cpu",
                   check=False, env=ENV)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "trained with other settings: model (embed_dim)" in lines[0]
    assert files() == before
    # The saved config and an optim change go on where the run stopped.
    run_cli("pretrain", str(demo_shards), "--out", str(run), "--config", str(run / "config.json"),
            "--set", "optim.steps=3", "--resume", "--device", "cpu", env=ENV)  # fmt: skip
    assert json.loads((run / "config.json").read_text())["optim"]["steps"] == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3


def test_help_names_set_and_yaml():
    out = run_cli("pretrain", "--help", env={"COLUMNS": "200"}).stdout
    assert "--set" in out and "SECTION.FIELD=VALUE" in out and "YAML" in out
