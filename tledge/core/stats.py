"""Is one model worse than another on the same few images, beyond chance?

Both of tledge's decisions on a validation split use these paired tests: the export gate (is
the int8 file worse than the float model?) and the phase rule (is a phase's model worse than
the one it started from?). Only the images where the two models disagree carry evidence; if
the two models were equally good, each of those would go either way with probability 1/2.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np

# The level of both decisions: one-sided, 5%.
SIGNIFICANCE = 0.05


def mcnemar_p(worse: int, better: int) -> float:
    """P(at least ``worse`` of the worse+better discordant images go against the file | both
    models equally good): the binomial tail at 1/2."""
    n = worse + better
    if n == 0 or worse == 0:
        return 1.0
    return float(Fraction(sum(comb(n, k) for k in range(worse, n + 1)), 2 ** n))


def paired_worse_p(old_right: np.ndarray, new_right: np.ndarray, labels: np.ndarray,
                   balanced: bool, draws: int = 20000) -> float:
    """P(the new model scores this far or further below the old one | both equally good).

    Args:
      old_right: per image, whether the old model's top-1 is the label.
      new_right: the same for the new model, on the same images.
      labels: per image, its class.
      balanced: the score is balanced accuracy (mean per-class recall: an image of a class
        with n images weighs 1/n), not accuracy (every image alike).
      draws: Monte Carlo draws where the weights differ.

    Returns:
      The one-sided p-value. With equal weights it is McNemar's exact test; with per-class
      weights the discordant images of each class are Binomial(d, 1/2) for the new model under
      the null, and the weighted score difference's tail is drawn (seeded: the same data give
      the same p).
    """
    old_right, new_right = np.asarray(old_right, bool), np.asarray(new_right, bool)
    labels = np.asarray(labels).reshape(-1)
    worse_img, better_img = old_right & ~new_right, new_right & ~old_right
    if not balanced:
        return mcnemar_p(int(worse_img.sum()), int(better_img.sum()))
    classes, counts = np.unique(labels, return_counts=True)
    weight = dict(zip(classes.tolist(), (1.0 / counts).tolist()))
    disc = {c: (int(np.sum(worse_img & (labels == c))), int(np.sum(better_img & (labels == c))))
            for c in classes.tolist()}
    disc = {c: wb for c, wb in disc.items() if sum(wb)}
    if not disc:
        return 1.0
    if len({weight[c] for c in disc}) == 1:  # one weight: McNemar exactly
        return mcnemar_p(sum(w for w, _ in disc.values()), sum(b for _, b in disc.values()))
    observed = sum(weight[c] * (b - w) for c, (w, b) in disc.items())
    rng = np.random.default_rng(0)
    drawn = np.zeros(draws)
    for c, (w, b) in disc.items():
        k = rng.binomial(w + b, 0.5, size=draws)  # the new model's wins among d = w + b
        drawn += weight[c] * (2 * k - (w + b))
    return float(np.mean(drawn <= observed + 1e-12))
