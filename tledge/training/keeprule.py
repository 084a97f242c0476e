"""Which model a run goes on with after a float phase: the one the phase made, unless it is worse
than the model the phase started from beyond chance on the validation split.

A phase that ends below its start by a validation figure alone is not evidence on a few
hundred images: on the 219 validation images of an imbalanced folder (3 of each rare class),
one rare image is 3.3 points of balanced accuracy. A fine-tune that ended 4.3 points below the
frozen phase there (1.3 rare images' worth) was thrown away, and that run held a model of 78.69%
on the 10,000 test images; the same run going on from the fine-tune ended at 82.46%
(`python benchmarks/imbalance.py --modes balanced --seed 1`, before and after this rule;
balanced was the default weighting then).
So the phase is compared with its start on the images where the two disagree (a paired test,
tledge.core.stats.paired_worse_p, each image weighted as the figure weighs it); only a
decline beyond chance (one-sided p < 0.05) brings the start back.
"""

from __future__ import annotations

import numpy as np

from tledge.core.stats import SIGNIFICANCE, paired_worse_p
from tledge.training.fitting import PhaseResult, balanced_accuracy


def judge(phase: PhaseResult, old_pred: np.ndarray, new_pred: np.ndarray,
          labels: np.ndarray) -> bool:
    """Whether the run goes on with ``phase``'s model; sets its ``kept`` and ``worse_p``.

    Args:
      phase: the phase that just ended (its kept epoch's figures).
      old_pred: the top-1 class of each validation image by the model the phase started from.
      new_pred: the phase's model's, on the same images.
      labels: the validation images' classes.
    """
    phase.kept = True
    labels = np.asarray(labels).reshape(-1)
    balanced = phase.monitor == "balanced_accuracy"
    figure = (lambda pred: balanced_accuracy(labels, pred, int(labels.max()) + 1)) if balanced \
        else (lambda pred: float(np.mean(pred == labels)))
    # both figures from these predictions: the model a phase starts from is the last kept
    # phase's, or, where --resume extends a phase, that phase's own
    if not figure(np.asarray(new_pred)) < figure(np.asarray(old_pred)):
        return True
    phase.worse_p = paired_worse_p(old_pred == labels, new_pred == labels, labels, balanced)
    phase.kept = phase.worse_p >= SIGNIFICANCE
    return phase.kept
