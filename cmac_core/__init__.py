"""cmac_core: streaming, models, losses, training and embedding on avprep shards."""

__version__ = "0.1.0"
