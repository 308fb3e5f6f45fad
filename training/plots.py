"""Every figure the project draws: a run's report, an evaluation, a study (matplotlib's object API, no pyplot).

Figures are built as `matplotlib.figure.Figure` objects and written as PNG, so no backend is chosen
and nothing opens a window; the numbers come from training.statistics and the callers.
"""

import csv
from pathlib import Path

import numpy as np
from grand_challenge_metrics.roc import get_bootstrapped_roc_ci_curves
from matplotlib.figure import Figure
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve


def plot_roc(oof_rows: list[dict], threshold: float, path: Path) -> None:
    """Pooled and per-fold ROC curves of the out-of-fold predictions, with the chosen operating point."""
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    labels = np.array([r["label"] for r in oof_rows])
    scores = np.array([r["score"] for r in oof_rows])
    folds = np.array([str(r["fold"]) for r in oof_rows])
    for fold in sorted(set(folds)):
        inside = folds == fold
        if 0 < labels[inside].sum() < inside.sum():
            fpr, tpr, _ = roc_curve(labels[inside], scores[inside])
            axes.plot(fpr, tpr, lw=0.8, alpha=0.5, label=f"fold {fold}")
    fpr, tpr, _ = roc_curve(labels, scores)
    axes.plot(fpr, tpr, color="black", lw=2, label="pooled")
    predicted = expit(scores) >= threshold
    axes.plot(np.mean(predicted[labels == 0]), np.mean(predicted[labels == 1]), "o", color="crimson",
              label=f"threshold {threshold:.3f}")
    axes.plot([0, 1], [0, 1], ":", color="grey")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity (atypical)", title="Out-of-fold ROC", aspect="equal")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_per_domain(per_domain: dict, path: Path) -> None:
    """Balanced accuracy and ROC AUC per domain value, one panel per domain key."""
    keys = list(per_domain)
    figure = Figure(figsize=(4 * len(keys), 3.5))
    panels = figure.subplots(1, len(keys), squeeze=False)
    for axes, key in zip(panels[0], keys):
        values = list(per_domain[key])
        x = np.arange(len(values))
        for offset, metric in ((-0.2, "balanced_accuracy"), (0.2, "roc_auc")):
            axes.bar(x + offset, [per_domain[key][v][metric] for v in values], width=0.4, label=metric.replace("_", " "))
        axes.set_xticks(x, [f"{v}\n(n={per_domain[key][v]['n']})" for v in values], fontsize=8)
        axes.set(ylim=(0, 1), title=key)
        axes.axhline(0.5, color="grey", lw=0.5)
    panels[0][0].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_learning_curves(fold_folders: list[Path], path: Path) -> None:
    """Training loss and validation ROC AUC per epoch, one line per fold."""
    figure = Figure(figsize=(9, 3.5))
    loss_axes, auc_axes = figure.subplots(1, 2)
    for folder in fold_folders:
        with (folder / "metrics.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        loss_axes.plot(epochs, [float(r["train_loss"]) for r in rows], label=folder.name)
        if rows and "val_roc_auc" in rows[0]:
            auc_axes.plot(epochs, [float(r["val_roc_auc"]) for r in rows], label=folder.name)
    loss_axes.set(xlabel="epoch", ylabel="training loss")
    auc_axes.set(xlabel="epoch", ylabel="validation ROC AUC (EMA weights)")
    auc_axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_evaluation(labels, probabilities, aggregates: dict, threshold: float, out_dir: Path) -> None:
    """roc.png (with a bootstrapped 95% band), reliability.png, per_domain.png."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    band = get_bootstrapped_roc_ci_curves(probabilities, labels, num_bootstraps=200)
    axes.fill_between(band.fpr_vals, band.low_tpr_vals, band.high_tpr_vals, alpha=0.25, label="95% band (bootstrap)")
    fpr, tpr, _ = roc_curve(labels, probabilities)
    axes.plot(fpr, tpr, color="black", label=f"ROC AUC {aggregates['overall_roc_auc']:.3f}")
    axes.plot(1 - aggregates["overall_specificity"], aggregates["overall_sensitivity"], "o", color="crimson",
              label=f"threshold {threshold:.3f}")
    axes.plot([0, 1], [0, 1], ":", color="grey")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity (atypical)", aspect="equal", title="ROC")
    axes.legend(loc="lower right", fontsize=8)
    save_figure(figure, out_dir / "roc.png")

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    observed, predicted = calibration_curve(labels, probabilities, n_bins=10, strategy="quantile")
    axes.plot(predicted, observed, "o-", label="model")
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    axes.set(xlabel="predicted P(atypical), per decile", ylabel="observed share atypical", aspect="equal",
             title="Reliability")
    axes.legend(loc="upper left", fontsize=8)
    save_figure(figure, out_dir / "reliability.png")

    domains = {k.removeprefix("domain_"): v for k, v in aggregates.items() if k.startswith("domain_")}
    figure = Figure(figsize=(max(4, 1.2 * len(domains) + 2), 3.5))
    axes = figure.subplots()
    x = np.arange(len(domains))
    for offset, metric in ((-0.2, "balanced_accuracy"), (0.2, "roc_auc")):
        axes.bar(x + offset, [d[metric] for d in domains.values()], width=0.4, label=metric.replace("_", " "))
    axes.set_xticks(x, [f"{name}\n(n={d['n']})" for name, d in domains.items()], fontsize=8)
    axes.set(ylim=(0, 1), title="Per domain")
    axes.legend(fontsize=8, loc="lower left")
    save_figure(figure, out_dir / "per_domain.png")


def plot_study(results: dict, study_dir: Path) -> None:
    """study_folds.png (per-fold metrics per config) and study_differences.png (paired differences)."""
    names = list(results["runs"])
    figure = Figure(figsize=(9, 3.5))
    panels = figure.subplots(1, 2)
    for axes, metric in zip(panels, ("roc_auc", "balanced_accuracy")):
        for x, name in enumerate(names):
            values = [m[metric] for m in results["runs"][name]["per_fold"].values()]
            axes.plot([x] * len(values), values, "o", alpha=0.6)
            axes.errorbar(x + 0.15, np.mean(values), yerr=np.std(values, ddof=1) if len(values) > 1 else 0,
                          fmt="s", color="black", capsize=3)
        axes.set_xticks(range(len(names)), names, fontsize=8, rotation=15)
        axes.set(title=metric.replace("_", " "), xlim=(-0.5, len(names) - 0.5))
    save_figure(figure, study_dir / "study_folds.png")
    if not results["differences"]:
        return
    figure = Figure(figsize=(8, 1.5 + 0.6 * len(results["differences"]) * 2))
    axes = figure.subplots()
    rows = [(f"{name}: {metric.replace('_', ' ')}", d) for name, diff in results["differences"].items()
            for metric, d in diff.items()]
    for y, (label, d) in enumerate(rows):
        axes.plot(d["per_fold"], [y] * len(d["per_fold"]), "o", alpha=0.5, color="tab:blue")
        axes.errorbar(d["mean"], y, xerr=[[d["mean"] - d["t_interval_95"][0]], [d["t_interval_95"][1] - d["mean"]]],
                      fmt="s", color="black", capsize=3)
    axes.axvline(0, color="grey", lw=1)
    axes.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    axes.set(xlabel="config - baseline: per fold (dots), mean and 95% t-interval (bar)")
    save_figure(figure, study_dir / "study_differences.png")


def save_figure(figure, path: Path) -> None:
    """Lay out and write a figure as PNG."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_calibration(labels, before, after, map_label: str, path: Path) -> None:
    """Reliability before and after calibration (`map_label` names the map): observed share atypical per bin of P."""
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    for probabilities, label in ((before, "as trained"), (after, f"calibrated: {map_label}")):
        observed, predicted = calibration_curve(labels, probabilities, n_bins=10, strategy="quantile")
        axes.plot(predicted, observed, "o-", label=label)
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    axes.set(xlabel="predicted P(atypical), per decile", ylabel="observed share atypical",
             title="Calibration, out of fold", xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left", fontsize=8)
    save_figure(figure, path)


def plot_threshold_transfer(panels: list[dict], path: Path) -> None:
    """Per panel (a held-out group and view set): rates against the threshold, with each rule's threshold.

    A panel is {"title", "labels", "probabilities", "rules": {name: threshold}, "best": threshold}.
    """
    figure = Figure(figsize=(5.5 * len(panels), 4.2))
    for axes, panel in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        labels, probabilities = np.asarray(panel["labels"]), np.asarray(panel["probabilities"])
        grid = np.linspace(0, 1, 201)
        sensitivity = np.array([np.mean(probabilities[labels == 1] >= t) for t in grid])
        specificity = np.array([np.mean(probabilities[labels == 0] < t) for t in grid])
        axes.plot(grid, (sensitivity + specificity) / 2, color="black", label="balanced accuracy")
        axes.plot(grid, sensitivity, color="tab:red", lw=1, alpha=0.7, label="sensitivity")
        axes.plot(grid, specificity, color="tab:blue", lw=1, alpha=0.7, label="specificity")
        for (rule, threshold), style in zip(panel["rules"].items(), ("--", "-.", ":")):
            axes.axvline(threshold, color="tab:green", ls=style, label=f"{rule} ({threshold:.3f})")
        axes.axvline(panel["best"], color="grey", lw=3, alpha=0.4, label=f"best on held-out ({panel['best']:.3f})")
        axes.set(xlabel="threshold on P(atypical)", ylabel="rate on the held-out patches", title=panel["title"],
                 xlim=(0, 1), ylim=(0, 1.02))
        axes.legend(loc="lower center", fontsize=7)
    save_figure(figure, path)
