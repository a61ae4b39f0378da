"""avprep: any video -> time-synchronized WebDataset shards (frames + log-mel).

Python API (imported lazily, so ``import avprep`` stays light)::

    from avprep import ShardConfig, shard_videos
    report = shard_videos(["videos/"], ShardConfig(out_dir="shards/"))
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ShardConfig", "shard_videos", "SCHEMA_VERSION"]


def __getattr__(name: str):
    if name == "ShardConfig":
        from avprep.config import ShardConfig

        return ShardConfig
    if name == "shard_videos":
        from avprep.pipeline import shard_videos

        return shard_videos
    if name == "SCHEMA_VERSION":
        from avprep.schema import SCHEMA_VERSION

        return SCHEMA_VERSION
    raise AttributeError(f"module 'avprep' has no attribute {name!r}")
