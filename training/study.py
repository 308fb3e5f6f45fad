"""A study: several experiment configs on one split, compared fold by fold, in one report.

The question it answers is the seed paper's (arXiv 2509.02612): does a variant (synthetic-balanced
training, another backbone) beat a baseline on the same folds? Every config trains on the same
slide-grouped split, so each fold gives a paired difference; the report gives per-fold and mean
+- sd balanced accuracy and ROC AUC, the paired differences with a 95% t-interval over folds and a
paired bootstrap interval over patches, per-domain results, and leave-one-domain-out results.

Balanced accuracy per fold uses a threshold chosen on the other folds' out-of-fold predictions, so
no number in the report has seen its own labels. A study resumes where it stopped: finished folds
are skipped, an unfinished one continues from its last epoch.

Layout: <study>/split.json, <study>/<config>/ (run folders), <study>/lodo_<key>/split.json and
<study>/lodo_<key>/<config>/, <study>/synth/ (generators, when a config needs synthetic images),
<study>/study.md, study.json, study_folds.png, study_differences.png.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import roc_auc_score

from training.config import ExperimentConfig
from training.crossval import fold_dirs, pooled_oof, run_crossval
from training.data import read_dataset
from training.metrics import best_threshold, binary_metrics
from training.splits import make_domain_split, save_split, split_for

BOOTSTRAP_RESAMPLES = 2000


def oof_table(run_dir: Path) -> dict:
    """A finished run's pooled out-of-fold predictions as arrays keyed by sample id order."""
    pooled = pooled_oof(fold_dirs(run_dir))
    ids = sorted(pooled)
    return {"ids": ids,
            "labels": np.array([pooled[i]["label"] for i in ids]),
            "probabilities": np.array([pooled[i]["probability"] for i in ids]),
            "folds": np.array([str(pooled[i]["fold"]) for i in ids])}


def per_fold_metrics(table: dict) -> dict[str, dict]:
    """ROC AUC per fold, and balanced accuracy with each fold's threshold chosen on the other folds."""
    labels, probabilities, folds = table["labels"], table["probabilities"], table["folds"]
    result = {}
    for fold in sorted(set(folds), key=int):
        inside = folds == fold
        threshold = best_threshold(labels[~inside], probabilities[~inside]) if (~inside).any() else 0.5
        metrics = binary_metrics(labels[inside], probabilities[inside], threshold)
        result[fold] = {"roc_auc": metrics["roc_auc"], "balanced_accuracy": metrics["balanced_accuracy"],
                        "threshold": threshold, "n": metrics["n"]}
    return result


def _mean_sd(values) -> dict:
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
                             lambda y, a, b: roc_auc_score(y, b) - roc_auc_score(y, a) if 0 < y.sum() < len(y) else 0.0,
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
        out[metric] = {"per_fold": differences, **_mean_sd(differences), "t_interval_95": t_interval(differences)}
    out["roc_auc"]["pooled"] = float(roc_auc_score(variant["labels"], variant["probabilities"])
                                     - roc_auc_score(baseline["labels"], baseline["probabilities"]))
    out["roc_auc"]["pooled_bootstrap_95"] = paired_auc_bootstrap(
        baseline["labels"], baseline["probabilities"], variant["probabilities"])
    return out


def summarise_run(run_dir: Path) -> dict:
    """Per-fold metrics, their mean +- sd, pooled metrics and per-domain results of one run."""
    table = oof_table(run_dir)
    folds = per_fold_metrics(table)
    results = json.loads((Path(run_dir) / "results.json").read_text())["oof"]
    return {"per_fold": folds,
            "roc_auc": _mean_sd([f["roc_auc"] for f in folds.values()]),
            "balanced_accuracy": _mean_sd([f["balanced_accuracy"] for f in folds.values()]),
            "pooled_roc_auc": results["at_threshold"]["roc_auc"],
            "pooled_balanced_accuracy_threshold_from_other_folds":
                (results.get("threshold_chosen_on_other_folds") or {}).get("balanced_accuracy"),
            "per_domain": results.get("per_domain", {})}


def _with_split(config: ExperimentConfig, **changes) -> ExperimentConfig:
    return dataclasses.replace(config, split=dataclasses.replace(config.split, **changes))


def run_study(configs: list[ExperimentConfig], study_dir: Path, *, leave_out: str | None = None, folds=None,
              prepare_synthetic=None, show_progress: bool = True) -> dict:
    """Train every config on the study's split (and leave-one-domain-out, if asked); write the report.

    `prepare_synthetic(config, split, split_dir)` makes a synthetic config's per-fold images under
    split_dir and returns the config pointing at them (see training.synth); None: they must exist.
    """
    study_dir = Path(study_dir)
    names = [config.name for config in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configs must have distinct names, got {names}")
    splits = {"": split_for(_samples(configs[0]), configs[0].split)}
    if leave_out:
        splits[f"lodo_{leave_out}"] = make_domain_split(_samples(configs[0]), leave_out)
    for split_name, split in splits.items():
        split_dir = study_dir / split_name
        save_split(split, split_dir / "split.json")
        for config in configs:
            if split_name:
                config = _with_split(config, leave_out=leave_out)
            if config.synthetic.dir is not None and prepare_synthetic is not None:
                config = prepare_synthetic(config, split, split_dir)
            run_crossval(config, split_dir / config.name, folds=folds if not split_name else None,
                         split_path=split_dir / "split.json", show_progress=show_progress)
    return write_study_report(study_dir, names, leave_out)


def _samples(config: ExperimentConfig):
    return read_dataset(config.data.kind, config.data.root, slides=config.data.slides)


def study_results(study_dir: Path, names: list[str], leave_out: str | None) -> dict:
    """Summaries of every run and the paired comparisons of each config against the first."""
    study_dir = Path(study_dir)
    results = {"baseline": names[0], "runs": {}, "differences": {}, "leave_one_out": {}}
    tables = {name: oof_table(study_dir / name) for name in names}
    baseline = tables[names[0]]
    results["coverage"] = {"n_folds": json.loads((study_dir / "split.json").read_text())["n_folds"],
                           "folds_trained": sorted(set(baseline["folds"].tolist()), key=int),
                           "n": len(baseline["ids"]), "n_atypical": int(baseline["labels"].sum())}
    for name in names:
        results["runs"][name] = summarise_run(study_dir / name)
    for name in names[1:]:
        results["differences"][name] = compare(tables[names[0]], tables[name])
    if leave_out:
        lodo_dir = study_dir / f"lodo_{leave_out}"
        split = json.loads((lodo_dir / "split.json").read_text())
        domain_of_fold = {str(f["fold"]): f["left_out"][leave_out] for f in split["folds"]}
        for name in names:
            per_fold = per_fold_metrics(oof_table(lodo_dir / name))
            results["leave_one_out"][name] = {domain_of_fold[f]: m for f, m in per_fold.items()}
    return results


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _interval(pair) -> str:
    return f"[{pair[0]:+.3f}, {pair[1]:+.3f}]"


def verdict(difference: dict) -> str:
    """One plain sentence on whether a paired difference is distinguishable from zero."""
    low, high = difference["t_interval_95"]
    if low > 0:
        return "better than the baseline on these folds (the interval excludes 0)"
    if high < 0:
        return "worse than the baseline on these folds (the interval excludes 0)"
    return "no detectable difference from the baseline (the interval includes 0)"


def study_markdown(results: dict, leave_out: str | None) -> str:
    """The study's report as Markdown."""
    names = list(results["runs"])
    folds = list(results["runs"][names[0]]["per_fold"])
    coverage = results["coverage"]
    trained = ("all " if len(coverage["folds_trained"]) == coverage["n_folds"] else "only folds "
               + ", ".join(coverage["folds_trained"]) + " of the ") + f"{coverage['n_folds']} folds"
    lines = ["# Study", "", f"Baseline: `{results['baseline']}`. Every config trained on the same slide-grouped "
             f"folds ({trained}; out-of-fold n = {coverage['n']} patches, {coverage['n_atypical']} atypical); "
             "balanced accuracy per fold uses a threshold chosen on the other trained folds.", "",
             "## Per fold", "", "| config | metric | " + " | ".join(f"fold {f}" for f in folds) + " | mean +- sd |",
             "|---|---|" + "---|" * (len(folds) + 1)]
    for name, run in results["runs"].items():
        for metric in ("roc_auc", "balanced_accuracy"):
            values = " | ".join(_fmt(run["per_fold"][f][metric]) for f in folds)
            lines.append(f"| {name} | {metric.replace('_', ' ')} | {values} | "
                         f"{_fmt(run[metric]['mean'])} +- {_fmt(run[metric]['sd'])} |")
    if results["differences"]:
        lines += ["", "## Paired differences (config - baseline)", "",
                  "| config | metric | per fold | mean | 95% t-interval (folds) | pooled | 95% bootstrap (patches) |",
                  "|---|---|---|---|---|---|---|"]
        for name, difference in results["differences"].items():
            for metric, d in difference.items():
                per_fold = ", ".join(f"{v:+.3f}" for v in d["per_fold"])
                pooled = f"{d['pooled']:+.3f}" if "pooled" in d else ""
                boot = _interval(d["pooled_bootstrap_95"]) if "pooled_bootstrap_95" in d else ""
                lines.append(f"| {name} | {metric.replace('_', ' ')} | {per_fold} | {d['mean']:+.3f} | "
                             f"{_interval(d['t_interval_95'])} | {pooled} | {boot} |")
            lines += ["", f"`{name}`: ROC AUC {verdict(difference['roc_auc'])}; balanced accuracy "
                          f"{verdict(difference['balanced_accuracy'])}.", ""]
    lines += _domain_lines(results, leave_out)
    lines += ["", "![per fold](study_folds.png)"] + (["", "![differences](study_differences.png)"]
                                                     if results["differences"] else [])
    return "\n".join(lines) + "\n"


def _domain_lines(results: dict, leave_out: str | None) -> list[str]:
    lines = []
    for name, run in results["runs"].items():
        for key, values in run["per_domain"].items():
            lines += ["", f"## Per {key}: {name} (pooled out-of-fold, at the pooled threshold)", "",
                      "| value | n | balanced accuracy | ROC AUC |", "|---|---|---|---|"]
            lines += [f"| {v} | {m['n']} | {_fmt(m['balanced_accuracy'])} | {_fmt(m['roc_auc'])} |"
                      for v, m in values.items()]
    if results["leave_one_out"]:
        lines += ["", f"## Leave one {leave_out} out (train on the others, test on it)", "",
                  "| config | left out | n | balanced accuracy | ROC AUC |", "|---|---|---|---|---|"]
        for name, per_domain in results["leave_one_out"].items():
            lines += [f"| {name} | {d} | {m['n']} | {_fmt(m['balanced_accuracy'])} | {_fmt(m['roc_auc'])} |"
                      for d, m in per_domain.items()]
    return lines


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
    _save(figure, study_dir / "study_folds.png")
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
    _save(figure, study_dir / "study_differences.png")


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_study_report(study_dir: Path, names: list[str], leave_out: str | None) -> dict:
    """study.json, study.md and the plots from the finished runs of a study."""
    study_dir = Path(study_dir)
    results = study_results(study_dir, names, leave_out)
    (study_dir / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    (study_dir / "study.md").write_text(study_markdown(results, leave_out))
    plot_study(results, study_dir)
    return results
