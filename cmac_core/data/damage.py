"""What readers meet besides samples: damaged samples, and shards that end early.

Shards often come from strangers. A sample that breaks the format (bad json, a
missing frame, a spectrogram of the wrong shape or with non-finite values, a
corrupt JPEG, a key that is not one) or a shard that stops being a tar part way
never stops a run and never costs a sleep: readers turn each into a marker
(``{"__error__": why, "__url__": shard, "__kind__": "sample" | "shard"}``), and
``Damage`` tallies the markers for a one-line-per-shard report at the end. Pickle
members and other schema versions do stop the run: they concern every shard.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field

import webdataset as wds
from webdataset.tariterators import group_by_keys

from avprep.schema import is_sample_member, member_problem, shown
from cmac_core.errors import CmacError

SAMPLE, SHARD = "sample", "shard"
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: members readers skip


class UnsafeShardError(CmacError):
    """A shard member whose decoding would run pickle."""


class SchemaVersionError(CmacError):
    """A shard of another schema version."""


class ShardFormatError(CmacError):
    """Nothing readable is left: every shard is damaged or not an avprep shard."""


def marker(url: str, e: BaseException | str, *, kind: str, key: object = None) -> dict:
    """A marker for damage met in shard ``url`` (in sample ``key``): ``e``'s first line, at
    most 300 chars."""
    if isinstance(e, BaseException):
        first = str(e.args[0] if e.args else e).strip().splitlines()
        text = type(e).__name__ if not first else first[0].split(" @ <")[0]  # webdataset's
        if not isinstance(e, CmacError) and not isinstance(e, ValueError):
            text = f"{type(e).__name__}: {text}"
    else:
        text = e
    return {"__error__": text[:300], "__url__": url, "__kind__": kind, "__sample__": shown(key)}


def is_marker(sample: dict) -> bool:
    return "__error__" in sample


def tar_files(url: str):
    """The regular members of shard ``url`` as webdataset's file dicts (``fname``, ``data``,
    ``__url__``), read as ``wds.tarfile_to_samples`` reads them (webdataset's opener, the
    tar as a stream, ``__...__`` meta members skipped), except that members of no sample
    suffix (``schema.is_sample_member``) are skipped unread and a member no reader may
    expand (``schema.member_problem``: sparse, or too large) ends the shard with a
    ``tarfile.ReadError`` before its bytes are read."""
    stream = wds.gopen(url)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                suffix = info.name.rsplit("/", 1)[-1].partition(".")[2]
                if not info.isreg() or _META.match(info.name) or not is_sample_member(suffix):
                    continue  # what no reader uses is never read
                problem = member_problem(info)
                if problem is not None:
                    raise tarfile.ReadError(problem)
                yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
                tar.members = []  # a stream: forget the headers read
    finally:
        stream.close()


class ShardSamples:
    """Shard URLs -> raw tar samples. A shard that cannot be read on (damaged, cut short,
    not a tar, a member no reader may expand) or holds no sample at all ends with a
    ``shard`` marker instead of stopping the run: the samples read before the damage
    still count."""

    def __call__(self, src):
        for shard in src:
            n = 0
            try:
                for sample in group_by_keys(tar_files(shard["url"])):
                    n += 1
                    yield sample
            except Exception as e:  # tarfile, gzip and I/O errors alike
                yield marker(shard["url"], e, kind=SHARD)
                continue
            if n == 0:
                yield marker(shard["url"], "holds no samples (an empty tar)", kind=SHARD)


def decode_or_marker(raw: dict, *stages) -> dict:
    """``raw`` through ``stages`` in turn, or a ``sample`` marker for a sample that is not
    a valid avprep sample. A marker passes through untouched."""
    if is_marker(raw):
        return raw
    sample = raw
    try:
        for stage in stages:
            sample = stage(sample)
        return sample
    except (UnsafeShardError, SchemaVersionError):
        raise
    except Exception as e:  # a corrupt member, a sample cut short, values out of range
        return marker(raw.get("__url__", "?"), e, kind=SAMPLE, key=raw.get("__key__"))


class OrMarker:
    """A picklable stage: ``decode_or_marker(sample, *stages)``."""

    def __init__(self, *stages) -> None:
        self.stages = stages

    def __call__(self, sample: dict) -> dict:
        return decode_or_marker(sample, *self.stages)


class DropDamaged:
    """Training stage: drops markers; the next good sample carries them (``"damage"``).

    Never spins: once every one of the ``n_shards`` shards has given damage since the
    last good sample and a damaged sample comes round again (more than
    ``clips_per_sample`` markers of it: the endless stream has gone all the way round
    without a good sample), nothing readable is left and ShardFormatError ends the run.
    A shard whose first samples are damaged is read on.
    """

    def __init__(self, n_shards: int, clips_per_sample: int = 1) -> None:
        self.n_shards, self.k = n_shards, clips_per_sample

    def __call__(self, src):
        pending: list[dict] = []
        bad_since_good: set[str] = set()
        seen: dict[tuple, int] = {}
        for s in src:
            if is_marker(s):
                pending.append(s)
                bad_since_good.add(s["__url__"])
                where = (s["__url__"], s.get("__kind__"), s.get("__sample__"))
                seen[where] = seen.get(where, 0) + 1
                if len(bad_since_good) >= self.n_shards and seen[where] > self.k:
                    raise ShardFormatError(
                        f"no readable sample in any of the {self.n_shards} shards "
                        f"(e.g. {s['__url__']}: {s['__error__']})"
                    )
                continue
            if pending:
                s["damage"] = s.get("damage", []) + pending
                pending = []
            bad_since_good.clear()
            seen.clear()
            yield s


@dataclass
class Damage:
    """Damage met, by shard: the damaged samples skipped (each counted once, however often
    an endless training stream meets it), and why a shard ended early."""

    samples: dict[str, set[str]] = field(default_factory=dict)  # url -> damaged samples (keys)
    first: dict[str, str] = field(default_factory=dict)  # url -> the first sample's problem
    cut_short: dict[str, str] = field(default_factory=dict)  # url -> why reading stopped

    def note(self, m: dict) -> None:
        url, why = m["__url__"], m["__error__"]
        if m.get("__kind__") == SHARD:
            self.cut_short.setdefault(url, why)
        else:
            self.samples.setdefault(url, set()).add(m.get("__sample__", "?"))
            self.first.setdefault(url, why)

    def update(self, other: Damage) -> None:
        for url, keys in other.samples.items():
            self.samples.setdefault(url, set()).update(keys)
        for mine, theirs in ((self.first, other.first), (self.cut_short, other.cut_short)):
            for url, why in theirs.items():
                mine.setdefault(url, why)

    def __bool__(self) -> bool:
        return bool(self.samples or self.cut_short)

    @property
    def n_samples(self) -> int:
        return sum(len(keys) for keys in self.samples.values())

    def lines(self) -> list[str]:
        """One line per damaged shard, sorted."""
        out = []
        for url in sorted(set(self.samples) | set(self.cut_short)):
            if url in self.samples:
                n = len(self.samples[url])
                out.append(f"shard {url}: {n} damaged sample{'s' * (n != 1)} skipped "
                           f"({self.first[url]})")  # fmt: skip
            if url in self.cut_short:
                out.append(f"shard {url} could not be read to its end: {self.cut_short[url]}")
        return out
