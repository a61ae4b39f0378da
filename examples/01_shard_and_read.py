"""Shard two synthetic videos from Python, then stream the shards with webdataset.

python examples/01_shard_and_read.py [WORK_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import webdataset as wds

from avprep import ShardConfig, shard_videos
from avprep.read_sample import decode_sample
from avprep.synth import make_demo_video


def main(work: Path) -> None:
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    make_demo_video(videos / "a.mp4", duration_s=4, tone_hz=440)
    make_demo_video(videos / "b.mp4", duration_s=4, tone_hz=880, rotate_deg=90)

    report = shard_videos([str(videos)], ShardConfig(out_dir=str(work / "shards"), workers=1))
    print(f"ok={report.counts['ok']} segments={report.n_segments} shards={len(report.shards)}")

    urls = sorted(str(p) for p in (work / "shards").glob("*.tar"))
    # decode_sample: one call from a webdataset sample to arrays (npy loaded with
    # allow_pickle=False, frames decoded to uint8, everything checked against the format).
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for sample in dataset:
        frames, spec, meta = decode_sample(sample)
        print(
            f"{sample['__key__']}: {len(frames)} frames {frames[0].shape} at "
            f"{meta['frame_times'][0]:.3f}..{meta['frame_times'][-1]:.3f} s, "
            f"spectrogram {spec.shape} {spec.dtype} from {meta['spec_start_s']:.3f} s"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="avprep-ex-")))
