"""Linear probes on frozen features: a multinomial logistic regression in torch.

Fit on the training split's features (standardised with the training split's mean and
spread), scored on the test split's: the share of test clips whose class is predicted.
Full-batch L-BFGS from zeros with a small L2 penalty, so the same features always give
the same probe. Chance is 1 / K for K balanced classes.

``video_probe_ceiling``: a clip shows k distinct classes and the video alone cannot tell
which of them sounds (every object moves and bounces alike; only the audio says), so a
video-only probe is right at best 1 time in k: the ceiling is the mean of 1 / k.
"""

from __future__ import annotations

import numpy as np
import torch


def probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *,
                 n_classes: int, l2: float = 1e-3, iterations: int = 200) -> np.ndarray:  # fmt: skip
    """``[M, n_classes]`` logits for ``test_x [M, C]`` of a logistic regression fit on
    ``train_x [N, C]``, ``train_y [N]`` (ints in 0..n_classes-1)."""
    x = torch.as_tensor(np.asarray(train_x), dtype=torch.float64)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    x = (x - mean) / std
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    t = (torch.as_tensor(np.asarray(test_x), dtype=torch.float64) - mean) / std
    with torch.no_grad():
        return (t @ w + b).numpy()


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, *, n_classes: int, l2: float = 1e-3,
                   iterations: int = 200) -> float:  # fmt: skip
    """Test accuracy of a logistic regression fit on ``train_x [N, C]``, ``train_y [N]``
    (ints in 0..n_classes-1) and applied to ``test_x [M, C]``, ``test_y [M]``."""
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or not len(test_x):
        raise ValueError("features and labels must pair up, with at least one test clip")
    scores = probe_scores(train_x, train_y, test_x, n_classes=n_classes, l2=l2,
                          iterations=iterations)  # fmt: skip
    return float(np.mean(scores.argmax(1) == np.asarray(test_y)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a positive (``labels`` true) scores above a negative (ties
    count half): 0.5 for scores that say nothing, whatever the classes' balance."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc needs positives and negatives")
    order = np.sort(neg)
    below = np.searchsorted(order, pos, side="left")
    ties = np.searchsorted(order, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def video_probe_ceiling(visible_classes: np.ndarray) -> float:
    """The best test accuracy of a probe on video alone: the mean over clips of
    1 / (distinct classes visible in the clip), ``visible_classes [N]`` ints >= 1."""
    k = np.asarray(visible_classes, np.float64)
    if not len(k) or (k < 1).any():
        raise ValueError(
            f"need at least one clip, each with >= 1 visible class, got {k.tolist()[:5]}"
        )
    return float(np.mean(1.0 / k))
