"""Which keys an embedding run has met, and where: every key is written once."""

from __future__ import annotations

import hashlib

import numpy as np

from cmac_core import distributed


class KeyLedger:
    """Every key this rank met in this run (embedded or already done), with its shard.

    The first sample of a key is kept; a later one is not embedded and is recorded. Under
    torchrun each rank reads other shards, so ``collisions`` compares the ranks' keys too:
    one all-gather of 8-byte hashes, then the few keys whose hashes meet.
    """

    def __init__(self) -> None:
        self.first: dict[str, str] = {}  # key -> shard URL
        self.again: dict[str, list[str]] = {}  # key -> the shards of its later samples
        self._urls: dict[str, str] = {}  # one string per URL, however many keys
        self.across = False  # whether another rank met one of these keys too

    def admit(self, key: str, url: str) -> bool:
        """True the first time ``key`` is met in this run."""
        url = self._urls.setdefault(url, url)
        if key not in self.first:
            self.first[key] = url
            return True
        self.again.setdefault(key, []).append(url)
        return False

    def collisions(self, *, across_ranks: bool) -> dict[str, list[str]]:
        """Key -> its shards (the kept one first) for every key met more than once, on any
        rank; the same on every rank."""
        if not across_ranks:
            return self._entries(self.again)
        hashes = np.fromiter((_hash64(k) for k in self.first), np.uint64, len(self.first))
        values, counts = np.unique(
            np.concatenate(distributed.gather_objects(np.unique(hashes))), return_counts=True
        )
        met = set(values[counts > 1].tolist())  # a key on two ranks, or two keys' hashes
        shared = [k for k, h in zip(self.first, hashes.tolist(), strict=True) if h in met]
        found: dict[str, list[str]] = {}
        ranks: dict[str, int] = {}
        for entries in distributed.gather_objects(self._entries([*self.again, *shared])):
            for k, urls in entries.items():  # in rank order: the lowest rank's row is kept
                found.setdefault(k, []).extend(urls)
                ranks[k] = ranks.get(k, 0) + 1
        self.across = any(n > 1 for n in ranks.values())
        return {k: urls for k, urls in found.items() if len(urls) > 1}

    def _entries(self, keys) -> dict[str, list[str]]:
        return {k: [self.first[k], *self.again.get(k, [])] for k in keys}


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
