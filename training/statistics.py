"""The numbers behind evaluate and study: the Track 2 evaluator's aggregates, intervals, paired comparisons.

Evaluation (`evaluator_aggregates`, `bootstrap_intervals`) follows the official evaluation
container: sensitivity, specificity, balanced accuracy and accuracy from the classes, ROC AUC from
P(atypical), pooled over pages and per tumour domain, with percentile bootstrap intervals over
pages (scipy.stats.bootstrap, paired). Studies compare configs on the same folds: per-fold metrics
(balanced accuracy at a threshold chosen on the other folds), paired differences with a 95%
t-interval over folds and a paired bootstrap over patches. No plotting and no files here.
"""

import numpy as np
from scipy import stats

from training.metrics import best_threshold, binary_metrics, class_rates, roc_auc


BOOTSTRAP_RESAMPLES = 2000


def evaluator_aggregates(labels, predicted, scores, domains) -> dict:
    """The official evaluator's `aggregates`: pooled metrics, then one entry per tumour domain."""
    labels, predicted, scores, domains = map(np.asarray, (labels, predicted, scores, domains))
    overall = class_rates(labels, predicted)
    aggregates = {f"overall_{key}": value for key, value in overall.items()}
    aggregates["overall_roc_auc"] = roc_auc(labels, scores)
    for domain in np.unique(domains):
        inside = domains == domain
        aggregates[f"domain_{domain}"] = {**class_rates(labels[inside], predicted[inside]),
                                          "roc_auc": roc_auc(labels[inside], scores[inside]), "n": int(inside.sum())}
    return aggregates


def bootstrap_intervals(labels, predicted, scores, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Percentile 95% intervals over pages for balanced accuracy, sensitivity, specificity, accuracy, ROC AUC."""
    labels, predicted, scores = (np.asarray(a, dtype=float) for a in (labels, predicted, scores))
    statistics = {
        "balanced_accuracy": lambda y, p, s: class_rates(y, p)["balanced_accuracy"],
        "sensitivity": lambda y, p, s: class_rates(y, p)["sensitivity"],
        "specificity": lambda y, p, s: class_rates(y, p)["specificity"],
        "accuracy": lambda y, p, s: class_rates(y, p)["accuracy"],
        "roc_auc": lambda y, p, s: roc_auc(y, s),
    }
    intervals = {}
    for name, statistic in statistics.items():
        result = stats.bootstrap((labels, predicted, scores), statistic, paired=True, vectorized=False,
                           n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
        low, high = result.confidence_interval
        intervals[name] = [float(low), float(high)]
    return intervals


def per_fold_metrics(table: dict) -> dict[str, dict]:
    """ROC AUC per fold, and balanced accuracy, sensitivity, specificity at a threshold chosen on the other folds."""
    labels, probabilities, folds = table["labels"], table["probabilities"], table["folds"]
    result = {}
    for fold in sorted(set(folds), key=int):
        inside = folds == fold
        threshold = best_threshold(labels[~inside], probabilities[~inside]) if (~inside).any() else 0.5
        metrics = binary_metrics(labels[inside], probabilities[inside], threshold)
        result[fold] = {name: metrics[name] for name in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity",
                                                         "threshold", "n", "n_atypical")}
    return result


def mean_sd(values) -> dict:
    """Mean and sample standard deviation (NaN for one value)."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan")}


def t_interval(differences) -> list[float]:
    """95% t-interval of the mean of paired per-fold differences."""
    differences = np.asarray(differences, dtype=float)
    if len(differences) < 2:
        return [float("nan"), float("nan")]
    half = stats.t.ppf(0.975, len(differences) - 1) * differences.std(ddof=1) / np.sqrt(len(differences))
    return [float(differences.mean() - half), float(differences.mean() + half)]


def paired_auc_bootstrap(labels, baseline, variant, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list:
    """95% percentile interval of ROC AUC(variant) - ROC AUC(baseline), resampling patches with both."""
    result = stats.bootstrap((labels, baseline, variant),
                             lambda y, a, b: roc_auc(y, b) - roc_auc(y, a) if 0 < y.sum() < len(y) else 0.0,
                             paired=True, vectorized=False, n_resamples=resamples, method="percentile",
                             rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def compare(baseline: dict, variant: dict) -> dict:
    """Paired per-fold and pooled differences variant - baseline (same split, same patches)."""
    if baseline["ids"] != variant["ids"]:
        raise ValueError("the two runs did not score the same patches; they must share one split")
    base_folds, variant_folds = per_fold_metrics(baseline), per_fold_metrics(variant)
    out = {}
    for metric in ("roc_auc", "balanced_accuracy"):
        differences = [variant_folds[f][metric] - base_folds[f][metric] for f in base_folds]
        out[metric] = {"per_fold": differences, **mean_sd(differences), "t_interval_95": t_interval(differences)}
    out["roc_auc"]["pooled"] = (roc_auc(variant["labels"], variant["probabilities"])
                                - roc_auc(baseline["labels"], baseline["probabilities"]))
    out["roc_auc"]["pooled_bootstrap_95"] = paired_auc_bootstrap(
        baseline["labels"], baseline["probabilities"], variant["probabilities"])
    return out


def verdict(difference: dict) -> str:
    """One plain sentence on whether a paired difference is distinguishable from zero."""
    low, high = difference["t_interval_95"]
    if low > 0:
        return "better than the baseline on these folds (the interval excludes 0)"
    if high < 0:
        return "worse than the baseline on these folds (the interval excludes 0)"
    return "no detectable difference from the baseline (the interval includes 0)"
