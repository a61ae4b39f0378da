"""The ground truth of an ``avprep synth`` sample, and where the sounding object is at a time.

Standard library only, like ``avprep/schema.py``: evaluation code reads it from a
sample's json without importing numpy or the generator. ``avprep shard`` copies
a manifest row's extra columns into every sample json as ``extra``; a synthetic
sample's ``extra`` holds (format ``TRUTH_VERSION``; times in seconds on the
video's timeline, the same timeline as the json's ``frame_times``)::

    synth          1 (this format's version)
    split, index, seed
    class_index    the sounding class, 0..n_classes-1 (the json's ``label`` is its name)
    n_classes
    box_times_s    the source video's frame times, k / fps
    boxes          the sounding object's box at each of them: [x0, y0, x1, y1], normalized
                   to [0, 1] in display coordinates (x right, y down, x1/y1 exclusive)
    onsets_s       the strikes that can be heard (its wall bounces outside silences_s)
    silences_s     [[start, end], ...]: nothing sounds there
    distractors    [{"label", "class_index", "boxes"}, ...]: the silent objects

A box holds from its frame time until the next frame time (the frame on
display), as ``avprep shard`` stores frames: ``box_at(meta, t)`` gives it for any
``t``, ``frame_boxes(meta)`` for every stored frame of the sample.
"""

from __future__ import annotations

import bisect
from typing import Any

TRUTH_VERSION = 1
TOLERANCE_S = 1e-3  # stored times are rounded to microseconds; frame periods are >= 33 ms

Box = tuple[float, float, float, float]


def truth_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The synthetic ground truth in a sample json (or the ``extra`` dict itself);
    ValueError in one line when it holds none of this format."""
    extra = meta.get("extra", meta) if isinstance(meta, dict) else None
    if not isinstance(extra, dict) or extra.get("synth") != TRUTH_VERSION:
        raise ValueError(f"no avprep synth ground truth (version {TRUTH_VERSION}) in this sample")
    return extra


def _index(times: list[float], t_s: float) -> int:
    """The frame on display at ``t_s``: the last one whose time is <= t_s (the first
    before it)."""
    return max(bisect.bisect_right(times, t_s + TOLERANCE_S) - 1, 0)


def box_at(meta: dict[str, Any], t_s: float, *, distractor: int | None = None) -> Box:
    """The sounding object's box at ``t_s`` seconds (or distractor ``distractor``'s):
    ``(x0, y0, x1, y1)`` normalized to [0, 1]."""
    truth = truth_of(meta)
    boxes = truth["boxes"] if distractor is None else truth["distractors"][distractor]["boxes"]
    return tuple(boxes[_index(truth["box_times_s"], t_s)])


def frame_boxes(meta: dict[str, Any], *, distractor: int | None = None) -> list[Box]:
    """The box at each of a sample json's ``frame_times``, in order."""
    return [box_at(meta, t, distractor=distractor) for t in meta["frame_times"]]


def sounding_at(meta: dict[str, Any], t_s: float) -> bool:
    """False inside a silent stretch (the object is there, but nothing sounds)."""
    return not any(a <= t_s < b for a, b in truth_of(meta)["silences_s"])


def box_pixels(box: Box, width_px: int, height_px: int) -> tuple[int, int, int, int]:
    """A normalized box as pixel bounds ``(c0, r0, c1, r1)`` (exclusive ends) of an image
    of that size, e.g. a map upsampled to the frame: ``image[r0:r1, c0:c1]``."""
    x0, y0, x1, y1 = box
    return (
        round(x0 * width_px),
        round(y0 * height_px),
        round(x1 * width_px),
        round(y1 * height_px),
    )
