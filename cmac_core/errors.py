"""One base class for every cmac_core error a person should see as one line.

The CLI catches ``CmacError`` by type and prints its message without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CmacError(ValueError):
    """A one-line problem with arguments, shards, a checkpoint, the run or its folder."""
