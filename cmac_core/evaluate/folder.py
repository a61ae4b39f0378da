"""The evaluation folder: whether ``avprep evaluate`` may use it, and for which settings.

A folder's runs and features belong to the settings that trained and extracted them. The
benchmark's own settings are checked by ``avprep.benchmark_shards``; the training settings
(the preset, steps, batch and crop) are recorded in ``evaluate.json`` by the first run and
a later run with others is refused in one line, before anything is written, rather than
reporting models trained one way under the settings of another. Seeds, arms and the 2AFC's
clips may change: they add to the folder. A folder from before the record is checked
against its runs' ``config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cmac_core.errors import CmacError
from cmac_core.evaluate.config import EvaluateConfig

SETTINGS_FILE = "evaluate.json"
FLAGS = {
    "preset": "--config",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "crop_px": "--crop-px",
}
# what a folder made by avprep evaluate holds; a non-empty folder with none of it is someone else's
OWN = (SETTINGS_FILE, "timings.json", "bench", "shards", "runs", "features")


class FolderError(CmacError):
    """A folder ``avprep evaluate`` must not use; one line."""


def settings(cfg: EvaluateConfig, device: torch.device) -> dict:
    """The settings that decide the folder's models and features (``auto`` resolved)."""
    return {"preset": cfg.preset_name(device.type), "steps": cfg.steps,
            "batch_size": cfg.batch_size, "crop_px": cfg.crop_px}  # fmt: skip


def check(cfg: EvaluateConfig, device: torch.device, report_dir: Path | None = None) -> None:
    """FolderError in one line where ``cfg.out_dir`` (or ``report_dir``) cannot be written,
    holds something else, or holds runs of other training settings. Writes nothing."""
    out = Path(cfg.out_dir)
    for folder in (out, report_dir):
        if folder is not None:
            _writable(folder)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not any((out / name).exists() for name in OWN):
        raise FolderError(
            f"{out} is not empty and holds no avprep evaluate run; choose a new folder"
        )
    wanted = settings(cfg, device)
    recorded = out / SETTINGS_FILE
    if recorded.exists():
        try:
            theirs = json.loads(recorded.read_text())
        except (OSError, ValueError) as e:
            raise FolderError(f"{recorded} is not readable ({e}); use a new folder") from e
    else:
        theirs = _from_runs(out)
    for name, value in wanted.items():
        if name in theirs and theirs[name] != value:
            raise FolderError(f"{out} holds runs made with {FLAGS[name]} {theirs[name]}, not {value}: "
                              "use a new folder (its runs and features belong to them)")  # fmt: skip


def record(cfg: EvaluateConfig, device: torch.device) -> None:
    """Write ``evaluate.json`` (once ``check`` passed)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SETTINGS_FILE}.tmp"
    tmp.write_text(json.dumps(settings(cfg, device), indent=1) + "\n")
    os.replace(tmp, out / SETTINGS_FILE)


def _writable(folder: Path) -> None:
    """FolderError unless ``folder`` is a folder or could be made one: its nearest existing
    ancestor must be a folder."""
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder} is a file, not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FolderError(f"cannot write to {folder}: {parent} is a file")
            return


def _from_runs(out: Path) -> dict:
    """The training settings of a folder from before ``evaluate.json``, from its first run."""
    for path in sorted((out / "runs").glob("*/config.json")):
        try:
            c = json.loads(path.read_text())
            return {"steps": c["optim"]["steps"], "batch_size": c["optim"]["batch_size"],
                    "crop_px": c["data"]["crop_px"]}  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {}
