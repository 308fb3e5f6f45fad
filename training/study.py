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

from training.config import ExperimentConfig
from training.crossval import fold_dirs, pooled_oof, run_crossval
from training.data import config_samples
from training.plots import plot_study
from training.report import study_markdown
from training.splits import make_domain_split, save_split, split_for
from training.statistics import compare, mean_sd, per_fold_metrics


def oof_table(run_dir: Path) -> dict:
    """A finished run's pooled out-of-fold predictions as arrays keyed by sample id order."""
    pooled = pooled_oof(fold_dirs(run_dir))
    ids = sorted(pooled)
    return {"ids": ids,
            "labels": np.array([pooled[i]["label"] for i in ids]),
            "probabilities": np.array([pooled[i]["probability"] for i in ids]),
            "folds": np.array([str(pooled[i]["fold"]) for i in ids])}


def summarise_run(run_dir: Path) -> dict:
    """Per-fold metrics, their mean +- sd, pooled metrics and per-domain results of one run."""
    table = oof_table(run_dir)
    folds = per_fold_metrics(table)
    results = json.loads((Path(run_dir) / "results.json").read_text())["oof"]
    return {"per_fold": folds,
            "roc_auc": mean_sd([f["roc_auc"] for f in folds.values()]),
            "balanced_accuracy": mean_sd([f["balanced_accuracy"] for f in folds.values()]),
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
    samples = config_samples(configs[0].data)
    splits = {"": split_for(samples, configs[0].split)}
    if leave_out:
        splits[f"lodo_{leave_out}"] = make_domain_split(samples, leave_out)
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


def on_folds(table: dict, folds: list[str]) -> dict:
    """The rows of an out-of-fold table whose fold is one of `folds`."""
    keep = np.isin(table["folds"], folds)
    return {"ids": [i for i, k in zip(table["ids"], keep) if k], "labels": table["labels"][keep],
            "probabilities": table["probabilities"][keep], "folds": table["folds"][keep]}


def common_folds(tables: dict[str, dict]) -> list[str]:
    """The folds every run trained: the only ones on which configs can be paired."""
    shared = set.intersection(*(set(t["folds"].tolist()) for t in tables.values()))
    if not shared:
        trained = {name: sorted(set(t["folds"].tolist()), key=int) for name, t in tables.items()}
        raise ValueError(f"the runs share no trained fold, so they cannot be compared: {trained}")
    return sorted(shared, key=int)


def study_results(study_dir: Path, names: list[str], leave_out: str | None) -> dict:
    """Summaries of every run and the paired comparisons of each config against the first.

    Each run is summarised on all the folds it trained; the paired differences use only the folds
    every config trained (a study rerun with --folds may leave some configs with fewer), and there
    balanced accuracy's thresholds come from the other shared folds.
    """
    study_dir = Path(study_dir)
    results = {"baseline": names[0], "runs": {}, "differences": {}, "leave_one_out": {}}
    tables = {name: oof_table(study_dir / name) for name in names}
    shared = common_folds(tables)
    paired = {name: on_folds(table, shared) for name, table in tables.items()}
    results["coverage"] = {"n_folds": json.loads((study_dir / "split.json").read_text())["n_folds"],
                           "folds_trained": shared,
                           "folds_trained_per_config": {name: sorted(set(t["folds"].tolist()), key=int)
                                                        for name, t in tables.items()},
                           "n": len(paired[names[0]]["ids"]), "n_atypical": int(paired[names[0]]["labels"].sum())}
    for name in names:
        results["runs"][name] = summarise_run(study_dir / name)
    for name in names[1:]:
        results["differences"][name] = compare(paired[names[0]], paired[name])
    if leave_out:
        lodo_dir = study_dir / f"lodo_{leave_out}"
        split = json.loads((lodo_dir / "split.json").read_text())
        domain_of_fold = {str(f["fold"]): f["left_out"][leave_out] for f in split["folds"]}
        for name in names:
            per_fold = per_fold_metrics(oof_table(lodo_dir / name))
            results["leave_one_out"][name] = {domain_of_fold[f]: m for f, m in per_fold.items()}
    return results


def write_study_report(study_dir: Path, names: list[str], leave_out: str | None) -> dict:
    """study.json, study.md and the plots from the finished runs of a study."""
    study_dir = Path(study_dir)
    results = study_results(study_dir, names, leave_out)
    (study_dir / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    (study_dir / "study.md").write_text(study_markdown(results, leave_out))
    plot_study(results, study_dir)
    return results
