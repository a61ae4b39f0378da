"""Frozen embeddings to Parquet: the frozen model (``frozen``), the table (``table``), where
its files go (``folder``), clip packing (``packing``), the keys met (``ledger``) and the run
(``run``)."""

from cmac_core.embed.folder import TableFolder
from cmac_core.embed.frozen import Frozen
from cmac_core.embed.packing import ClipPacker
from cmac_core.embed.run import EmbedReport, embed
from cmac_core.embed.table import EmbedError

__all__ = ["ClipPacker", "EmbedError", "EmbedReport", "Frozen", "TableFolder", "embed"]
