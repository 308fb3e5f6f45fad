"""Threshold rules: where P(atypical) is cut into classes, chosen from out-of-fold predictions only.

The members' pooled out-of-fold predictions are the only labelled scores no member trained on, but
each patch in them is scored by one member, while the shipped graph averages every member; a rule
is judged by how well its threshold transfers to slides no member saw (training.threshold_transfer).

- `oof_best`: the threshold that maximises balanced accuracy on the pooled out-of-fold predictions.
- `fold_median`: the median of each fold's own best threshold (less swayed by one fold's scores).
- `prevalence`: the share of atypical figures among the out-of-fold patches (every patch the
  members trained on). For calibrated probabilities, predicting atypical when P >= prevalence
  maximises expected balanced accuracy (the Bayes rule for equal class weights), so this rule
  leans on the calibration, not on the shape of one ROC curve.
"""

import numpy as np

from training.metrics import best_threshold

RULES = ("oof_best", "fold_median", "prevalence")
DEFAULT_RULE = "oof_best"
DESCRIPTIONS = {
    "oof_best": "maximises balanced accuracy of the members' pooled out-of-fold predictions, as the graph computes "
                "them (views, calibration)",
    "fold_median": "the median of each fold's threshold maximising balanced accuracy of its out-of-fold predictions, "
                   "as the graph computes them (views, calibration)",
    "prevalence": "the share of atypical figures among the out-of-fold patches: the balanced-accuracy rule for "
                  "calibrated probabilities",
}


def rule_thresholds(labels, probabilities, folds) -> dict[str, float]:
    """Every rule's threshold on pooled out-of-fold (labels, probabilities, folds)."""
    labels, probabilities, folds = np.asarray(labels).astype(int), np.asarray(probabilities), np.asarray(folds)
    per_fold = [best_threshold(labels[folds == fold], probabilities[folds == fold]) for fold in np.unique(folds)
                if 0 < labels[folds == fold].sum() < (folds == fold).sum()]
    return {"oof_best": best_threshold(labels, probabilities),
            "fold_median": float(np.median(per_fold)) if per_fold else best_threshold(labels, probabilities),
            "prevalence": float(labels.mean())}


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(RULES)}")
    return rule
