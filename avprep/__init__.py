"""avprep: any video -> time-synchronized WebDataset shards (frames + log-mel)."""

__version__ = "0.1.0"
