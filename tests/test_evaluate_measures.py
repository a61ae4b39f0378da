"""avprep evaluate's measures on hand-made maps, boxes and features whose answers are known:
localization (pointing, which object, size-aware IoU, cIoU, success, AUC, the centre prior),
the linear probe and ROC AUC, the video-only probe's ceiling on hand-made truth, and R@1."""

from __future__ import annotations

import numpy as np
import pytest

from cmac_core.evaluate import localization as loc
from cmac_core.evaluate.arms import derangement
from cmac_core.evaluate.features import clip_box, visible_classes
from cmac_core.evaluate.probes import probe_accuracy, roc_auc, video_probe_ceiling
from cmac_core.evaluate.retrieval import recall_at_1

SHAPE = (20, 20)
BOX = (4, 4, 8, 8)  # c0, r0, c1, r1: 16 pixels


def _blob(box, shape=SHAPE, *, value=1.0) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    c0, r0, c1, r1 = box
    m[r0:r1, c0:c1] = value
    return m


def test_pointing_is_the_peak_inside_the_box():
    m = _blob(BOX) * 0.5
    m[5, 6] = 1.0  # row 5, column 6: inside
    assert loc.pointing(m, BOX) == 1.0
    m[15, 15] = 2.0  # a higher peak outside
    assert loc.pointing(m, BOX) == 0.0
    edge = np.zeros(SHAPE)
    edge[4, 8] = 1.0  # column 8 is the box's exclusive end
    assert loc.pointing(edge, BOX) == 0.0


def test_which_object_compares_the_map_inside_each_object():
    m = np.zeros((8, 8), np.float32)
    m[0:2, 0:2] = 1.0  # on the sounding object
    m[6:8, 6:8] = 0.5
    sounding, silent = (0, 0, 2, 2), (6, 6, 8, 8)
    assert loc.which_object(m, sounding, [silent]) == 1.0
    assert loc.which_object(m, silent, [sounding]) == 0.0
    assert loc.which_object(m, sounding, [silent, (0, 0, 2, 2)]) == 0.0  # a tie is not a win
    flat = np.ones((8, 8), np.float32)
    assert loc.which_object(flat, sounding, [silent]) == 0.0


def test_the_clip_box_holds_the_object_at_every_frame():
    assert clip_box([(10, 20, 50, 60), (14, 18, 54, 58), (18, 16, 58, 56)]) == (10, 16, 58, 60)
    assert clip_box([(3, 4, 5, 6)]) == (3, 4, 5, 6)


def test_size_aware_iou_keeps_as_many_pixels_as_the_box_has():
    assert loc.size_aware_iou(_blob(BOX), BOX) == 1.0
    assert loc.size_aware_iou(_blob((12, 12, 16, 16)), BOX) == 0.0
    shifted = _blob((6, 4, 10, 8))  # half the box: 8 shared pixels of 16 + 16 - 8
    assert loc.size_aware_iou(shifted, BOX) == pytest.approx(8 / 24)
    # A big box is not penalised for the map's spread: ranking is all that counts.
    big = (0, 0, 10, 20)
    ramp = np.tile(np.arange(20, 0, -1, dtype=np.float32), (20, 1))  # decreasing to the right
    assert loc.size_aware_iou(ramp, big) == 1.0


def test_ciou_flags_half_the_map_and_its_ceiling():
    half = (0, 0, 10, 20)  # exactly half the frame
    assert loc.ciou(_blob(half), half) == 1.0
    assert loc.ciou_ceiling(half, SHAPE) == 1.0
    # A 16-pixel box can share at most 16 of 200 flagged pixels: 16 / 200.
    assert loc.ciou(_blob(BOX), BOX) == pytest.approx(16 / 200)
    assert loc.ciou_ceiling(BOX, SHAPE) == pytest.approx(16 / 200)
    assert loc.ciou(_blob((10, 0, 20, 20)), half) == 0.0


def test_success_rate_and_auc():
    cious = np.array([0.0, 0.25, 0.5, 1.0])
    assert loc.success_rate(cious) == 0.5
    assert loc.auc(np.ones(5)) == pytest.approx(1.0)
    assert loc.auc(np.zeros(5)) == pytest.approx(0.025)  # success at 0 only: half a strip
    # Each clip of cIoU c adds c (the thresholds it passes, integrated); trapezoids on a
    # 0.05 grid give exactly that for c on the grid.
    assert loc.auc(np.array([0.5, 0.25])) == pytest.approx((0.5 + 0.25) / 2 + 0.05 / 2)


def test_centre_prior_peaks_at_the_centre_and_measure_averages():
    prior = loc.centre_prior(SHAPE)
    assert np.unravel_index(prior.argmax(), SHAPE) in {(9, 9), (9, 10), (10, 9), (10, 10)}
    figures = loc.measure([prior, prior], [(8, 8, 12, 12), (0, 0, 4, 4)])
    assert figures["pointing"] == 0.5
    assert figures["size_aware_iou"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        loc.measure([prior], [])


def test_probe_separable_features_vs_random():
    rng = np.random.default_rng(0)
    k, n = 4, 200
    y_train, y_test = rng.integers(0, k, n), rng.integers(0, k, n)
    centres = rng.normal(0, 5, (k, 16))
    x_train = centres[y_train] + rng.normal(0, 1, (n, 16))
    x_test = centres[y_test] + rng.normal(0, 1, (n, 16))
    assert probe_accuracy(x_train, y_train, x_test, y_test, n_classes=k) >= 0.95
    noise_train, noise_test = rng.normal(size=(n, 16)), rng.normal(size=(n, 16))
    acc = probe_accuracy(noise_train, y_train, noise_test, y_test, n_classes=k)
    assert abs(acc - 1 / k) < 0.12  # chance, within sampling error of 200 clips
    assert probe_accuracy(x_train, y_train, x_test, y_test, n_classes=k) == probe_accuracy(
        x_train, y_train, x_test, y_test, n_classes=k
    )  # deterministic


def test_roc_auc_counts_every_positive_negative_pair():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    labels = rng.random(300) < 0.2
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairs)
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    with pytest.raises(ValueError):
        roc_auc([1.0, 2.0], [1, 1])


def _truth(sounding: int, *others: int, n_classes: int = 8) -> dict:
    return {"class_index": sounding, "n_classes": n_classes,
            "distractors": [{"class_index": c} for c in others]}  # fmt: skip


def test_video_probe_ceiling_is_one_over_the_distinct_visible_classes():
    assert visible_classes(_truth(3, 5)) == 2
    assert visible_classes(_truth(3, 3)) == 1  # the same class twice: the video tells it
    assert visible_classes(_truth(0, 1, 1)) == 2
    assert visible_classes(_truth(7)) == 1
    # classes that never sound (avprep synth --silent-classes) cannot be the label
    assert visible_classes(_truth(1, 5, n_classes=4)) == 1
    assert visible_classes(_truth(1, 2, 6, n_classes=4)) == 2
    assert video_probe_ceiling([visible_classes(_truth(3, 5))]) == 0.5
    assert video_probe_ceiling([visible_classes(_truth(3, 3))]) == 1.0
    assert video_probe_ceiling([2, 1, 4, 4]) == pytest.approx((0.5 + 1 + 0.25 + 0.25) / 4)
    with pytest.raises(ValueError):
        video_probe_ceiling([])


def test_recall_at_1_identical_vs_shuffled_pairs():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(100, 32))
    assert recall_at_1(z, z) == 1.0
    assert recall_at_1(z, z * 3.0) == 1.0  # cosine: scale does not matter
    assert recall_at_1(z, z[derangement(100, rng)]) == 0.0
    with pytest.raises(ValueError):
        recall_at_1(z, z[:10])
