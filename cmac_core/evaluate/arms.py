"""The arms of the protocol, and the shuffled-audio control's training data.

Every arm has the same encoders, data and steps; they differ in the objective, or (the
control) in the data. ``shuffled_audio_copy`` writes a copy of the training shards in
which each sample's spectrogram is another video's (a seeded derangement): the pairing a
model could learn from is gone, so anything that arm "localizes" is a shortcut.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avprep import schema
from cmac_core.errors import CmacError

SPEC_MEMBER = "spec.npy"


class ArmError(CmacError):
    """Shards the control cannot be made from; one line."""


@dataclass(frozen=True)
class Arm:
    """One arm: ``method`` (``LossConfig.method``), within-modal negatives on or off,
    targets from a momentum copy (``target_momentum`` > 0) or at another temperature
    (``target_temperature``), trained on shuffled audio, or
    not trained at all (random init; cmac's architecture)."""

    name: str
    method: str = "cmac"
    within_modal_negatives: bool = True
    target_momentum: float = 0.0
    target_temperature: float | None = None  # None: the preset's (0.1)
    shuffled_audio: bool = False
    trained: bool = True

    @property
    def has_alpha(self) -> bool:
        """Whether the model has a vision-only map: lla's alpha_v is uniform by design, so
        its alpha measures are not applicable (None), not figures."""
        return self.method != "lla"


ARMS = (
    Arm("random_init", trained=False),
    Arm("avid", method="avid"),
    Arm("cmac"),
    Arm("cmac_no_within", within_modal_negatives=False),
    Arm("cmac_momentum", target_momentum=0.99),
    Arm("cmac_sharp", target_temperature=0.05),
    Arm("shuffled_audio", shuffled_audio=True),
    Arm("lla", method="lla"),
)
# cmac_momentum (opt-in) asks why CMAC adds little: its targets come from a slowly moving
# copy of the model instead of the model itself (cmac_core/targets.py). cmac_sharp (opt-in)
# asks whether sharper targets (tau_b 0.05 instead of 0.1) give a sharper alpha: alpha cannot
# be sharper than its targets (docs/method.md).
# By default every arm but lla and cmac_momentum (``--arms ...,lla`` adds it): lla's clips are twice as long
# (8 frames in tiny) and its step costs about 1.5x cmac's CPU time, so with it the full
# protocol does not fit its 45 minutes on 2 CPU cores at 240 steps (measured, see config.py).
FULL_ARMS = ("random_init", "avid", "cmac", "cmac_no_within", "shuffled_audio")
QUICK_ARMS = ("random_init", "avid", "cmac")


def arm(name: str) -> Arm:
    found = [a for a in ARMS if a.name == name]
    if not found:
        raise ArmError(f"unknown arm {name!r} (known: {', '.join(a.name for a in ARMS)})")
    return found[0]


def _read(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def _split(name: str) -> tuple[str, str]:
    """``"{key}.{member}"`` -> (key, member); keys hold no dots (schema)."""
    key, _, member = name.partition(".")
    return key, member


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``0..n-1`` moving every index (n >= 2): Sattolo's single cycle."""
    if n < 2:
        raise ArmError(f"cannot give {n} sample(s) another's audio: need at least 2")
    p = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))
        p[i], p[j] = p[j], p[i]
    return p


def shuffled_audio_copy(src_dir: str | Path, dst_dir: str | Path, *, seed: int) -> dict[str, str]:
    """Copy every shard of ``src_dir`` to ``dst_dir`` with each sample's spectrogram member
    exchanged for another video's (and, in v2, the json's ``spec_min`` with it: the
    padding value of the spectrogram it now holds). Samples are grouped by their spectrogram's size in
    bytes (same shape, so every json still describes its new spectrogram) and deranged
    within a group along one random cycle, so no sample keeps its own audio; a copy in
    which a sample would hold another segment of its own video is refused. Returns ``{key: key whose audio it now holds}``. Each shard is
    written under a temporary name and renamed; a finished copy is reused."""
    src, dst = Path(src_dir), Path(dst_dir)
    shards = sorted(src.glob(f"*{schema.SHARD_SUFFIX}"))
    if not shards:
        raise ArmError(f"no shards in {src}")
    contents = {p.name: _read(p) for p in shards}
    specs: dict[str, bytes] = {}
    spec_mins: dict[str, float] = {}  # v2 jsons carry their spectrogram's minimum (padding)
    for members in contents.values():
        for info, data in members:
            key, member = _split(info.name)
            if member == SPEC_MEMBER:
                specs[key] = data
            elif member == schema.JSON:
                meta = json.loads(data)
                if "spec_min" in meta:
                    spec_mins[key] = meta["spec_min"]
    groups: dict[int, list[str]] = {}
    for key in sorted(specs):
        groups.setdefault(len(specs[key]), []).append(key)
    rng = np.random.default_rng([seed, 0x5AFF])
    donor: dict[str, str] = {}
    for keys in groups.values():
        order = [keys[i] for i in rng.permutation(len(keys))]
        for i, j in enumerate(derangement(len(order), rng)):
            donor[order[i]] = order[j]
    same_video = [k for k, d in donor.items() if k.rsplit("_", 1)[0] == d.rsplit("_", 1)[0]]
    if same_video:
        raise ArmError(f"{len(same_video)} samples would keep audio of their own video (e.g. "
                       f"{same_video[0]}): too few videos with spectrograms of one shape")  # fmt: skip
    dst.mkdir(parents=True, exist_ok=True)
    for name, members in contents.items():
        final = dst / name
        if final.exists():
            continue
        tmp = dst / f".{name}.tmp"
        with tarfile.open(tmp, "w") as tar:
            for info, data in members:
                key, member = _split(info.name)
                if member == SPEC_MEMBER:
                    data = specs[donor[key]]
                elif member == schema.JSON and donor[key] in spec_mins:
                    data = json.dumps(
                        {**json.loads(data), "spec_min": spec_mins[donor[key]]}
                    ).encode()
                new = tarfile.TarInfo(info.name)
                new.size, new.mtime, new.mode = len(data), info.mtime, info.mode
                tar.addfile(new, io.BytesIO(data))
        os.replace(tmp, final)
    return donor
