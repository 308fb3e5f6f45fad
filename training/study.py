"""A study: several experiment configs on one split, compared fold by fold, in one report.

The question it answers is the seed paper's (arXiv 2509.02612): does a variant (synthetic-balanced
training, another backbone) beat a baseline on the same folds? Every config trains on the same
slide-grouped split, so each fold gives a paired difference; the report gives per-fold and mean
+- sd balanced accuracy and ROC AUC, the paired differences with a 95% t-interval over folds and a
paired bootstrap interval over patches, per-domain results, and leave-one-domain-out results.

A row of the report may be an ensemble of several configs ("a+b"): each patch scored by every
config's member of its fold, the scores averaged as the exported graph averages its members.

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
from training.crossval import fold_dirs, oof_metrics, pooled_oof, run_crossval
from training.data import config_samples
from training.plots import plot_study
from training.report import study_markdown
from training.splits import load_split, make_domain_split, save_split, split_fingerprint, split_for
from training.statistics import compare, mean_sd, per_fold_metrics


ENSEMBLE = "+"  # a study row "a+b": the ensemble of configs a and b, their scores averaged per patch


def row_runs(study_dir: Path, row: str) -> list[Path]:
    """The run folders a study row is made of: one config's, or every member's of an ensemble row."""
    return [Path(study_dir) / name for name in row.split(ENSEMBLE)]


def pooled_runs(run_dirs: list[Path]) -> dict[str, dict]:
    """Pooled out-of-fold predictions of one run, or of several on one split averaged as scores.

    Several runs are an ensemble as the exported graph computes it: each patch scored by every run's
    member of its fold, the scores (logits) averaged. The runs must have trained the same folds, or
    some patches would be scored by fewer members than others.
    """
    folders = {Path(run_dir): fold_dirs(run_dir) for run_dir in run_dirs}
    trained = {run_dir.name: sorted(folder.name for folder in fold_folders) for run_dir, fold_folders in folders.items()}
    if len({tuple(names) for names in trained.values()}) > 1:
        raise ValueError(f"the members of an ensemble must have trained the same folds, got {trained}")
    if len(run_dirs) > 1:  # one split: every run scored each patch with the same fold's member
        _check_one_split(run_dirs)
    return pooled_oof([folder for fold_folders in folders.values() for folder in fold_folders])


def _check_one_split(run_dirs: list[Path]) -> None:
    """The runs' split.json files name one split (compared by split_fingerprint, as export compares members)."""
    digests = {split_fingerprint(load_split(Path(run_dir) / "split.json")) for run_dir in run_dirs}
    if len(digests) > 1:
        names = ", ".join(Path(run_dir).name for run_dir in run_dirs)
        raise ValueError(f"the members of an ensemble must share one split: {names} do not")


def oof_table(run_dirs: list[Path]) -> dict:
    """Pooled out-of-fold predictions (of one run or an ensemble, pooled_runs) as arrays in sample id order."""
    return _as_table(pooled_runs(run_dirs))


def _as_table(pooled: dict[str, dict]) -> dict:
    ids = sorted(pooled)
    return {"ids": ids,
            "labels": np.array([pooled[i]["label"] for i in ids]),
            "probabilities": np.array([pooled[i]["probability"] for i in ids]),
            "folds": np.array([str(pooled[i]["fold"]) for i in ids])}


def summarise_run(run_dirs: list[Path], samples) -> dict:
    """Per-fold metrics, their mean +- sd, pooled metrics and per-domain results of one run or an ensemble.

    Per-domain results are at the pooled threshold, as a run's results.json has them, from the
    study's `samples` (which carry the domains).
    """
    pooled_rows = pooled_runs(run_dirs)
    folds = per_fold_metrics(_as_table(pooled_rows))
    pooled = oof_metrics(pooled_rows, samples)
    return {"per_fold": folds,
            "roc_auc": mean_sd([f["roc_auc"] for f in folds.values()]),
            "balanced_accuracy": mean_sd([f["balanced_accuracy"] for f in folds.values()]),
            "pooled_roc_auc": pooled["at_threshold"]["roc_auc"],
            "pooled_balanced_accuracy_threshold_from_other_folds":
                (pooled.get("threshold_chosen_on_other_folds") or {}).get("balanced_accuracy"),
            "per_domain": pooled.get("per_domain", {})}


def with_split(config: ExperimentConfig, **changes) -> ExperimentConfig:
    """`config` with its split config changed (as the study trains it on a leave-one-out split)."""
    return dataclasses.replace(config, split=dataclasses.replace(config.split, **changes))


def run_study(configs: list[ExperimentConfig], study_dir: Path, *, rows: list[str] | None = None,
              leave_out: str | None = None, folds=None, prepare_synthetic=None, show_progress: bool = True) -> dict:
    """Train every config on the study's split (and leave-one-domain-out, if asked); write the report.

    `rows`: what the report compares, the first being the baseline: config names, or ensembles of
    them joined by ENSEMBLE ("a+b"); default: one row per config. `prepare_synthetic(config, split,
    split_dir)` makes a synthetic config's per-fold images under split_dir and returns the config
    pointing at them (see training.synth); None: they must exist.
    """
    study_dir = Path(study_dir)
    names = [config.name for config in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configs must have distinct names, got {names}")
    rows = rows or names
    unknown = sorted({member for row in rows for member in row.split(ENSEMBLE)} - set(names))
    if unknown or len(set(rows)) != len(rows):
        raise ValueError(f"study rows must be distinct and made of the configs trained, got {rows} for {names}")
    samples = config_samples(configs[0].data)
    splits = {"": split_for(samples, configs[0].split)}
    if leave_out:
        splits[f"lodo_{leave_out}"] = make_domain_split(samples, leave_out)
    for split_name, split in splits.items():
        split_dir = study_dir / split_name
        save_split(split, split_dir / "split.json")
        for config in configs:
            if split_name:
                config = with_split(config, leave_out=leave_out)
            if config.synthetic.dir is not None and prepare_synthetic is not None:
                config = prepare_synthetic(config, split, split_dir)
            run_crossval(config, split_dir / config.name, folds=folds if not split_name else None,
                         split_path=split_dir / "split.json", show_progress=show_progress)
    return write_study_report(study_dir, rows, leave_out, samples)


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


def study_results(study_dir: Path, names: list[str], leave_out: str | None, samples) -> dict:
    """Summaries of every run and the paired comparisons of each config against the first.

    `samples` (with their domains) give every row, ensembles too, its per-domain results.

    Each run is summarised on all the folds it trained; the paired differences use only the folds
    every config trained (a study rerun with --folds may leave some configs with fewer), and there
    balanced accuracy's thresholds come from the other shared folds.
    """
    study_dir = Path(study_dir)
    results = {"baseline": names[0], "runs": {}, "differences": {}, "leave_one_out": {}}
    tables = {name: oof_table(row_runs(study_dir, name)) for name in names}
    shared = common_folds(tables)
    paired = {name: on_folds(table, shared) for name, table in tables.items()}
    results["coverage"] = {"n_folds": json.loads((study_dir / "split.json").read_text())["n_folds"],
                           "folds_trained": shared,
                           "folds_trained_per_config": {name: sorted(set(t["folds"].tolist()), key=int)
                                                        for name, t in tables.items()},
                           "n": len(paired[names[0]]["ids"]), "n_atypical": int(paired[names[0]]["labels"].sum())}
    for name in names:
        results["runs"][name] = summarise_run(row_runs(study_dir, name), samples)
    for name in names[1:]:
        results["differences"][name] = compare(paired[names[0]], paired[name])
    if leave_out:
        lodo_dir = study_dir / f"lodo_{leave_out}"
        for name in names:
            results["leave_one_out"][name] = leave_one_out_metrics(lodo_dir, row_runs(lodo_dir, name), leave_out)
        results["selection"] = selection_scores(results["runs"], results["leave_one_out"])
    return results


def selection_scores(runs: dict[str, dict], leave_one_out: dict[str, dict]) -> dict[str, dict]:
    """docs/recipes.md's score per config: S = (mean k-fold ROC AUC + mean leave-one-out ROC AUC) / 2."""
    scores = {}
    for name, run in runs.items():
        kfold = run["roc_auc"]["mean"]
        lodo = float(np.mean([m["roc_auc"] for m in leave_one_out[name].values()]))
        scores[name] = {"kfold_roc_auc": kfold, "leave_one_out_roc_auc": lodo, "score": (kfold + lodo) / 2}
    return scores


def leave_one_out_metrics(lodo_dir: Path, run_dirs: list[Path], key: str) -> dict[str, dict]:
    """Per left-out value of `key`, per_fold_metrics of one run or an ensemble on `lodo_dir`'s split.

    Only the folds trained appear; each one's balanced accuracy is at a threshold chosen on the
    other folds' left-out patches.
    """
    split = load_split(Path(lodo_dir) / "split.json")
    value_of_fold = {str(entry["fold"]): entry["left_out"][key] for entry in split["folds"]}
    return {value_of_fold[fold]: metrics for fold, metrics in per_fold_metrics(oof_table(run_dirs)).items()}


def write_study_report(study_dir: Path, names: list[str], leave_out: str | None, samples) -> dict:
    """study.json, study.md and the plots from the finished runs of a study (`samples`: its samples)."""
    study_dir = Path(study_dir)
    results = study_results(study_dir, names, leave_out, samples)
    (study_dir / "study.json").write_text(json.dumps(results, indent=2) + "\n")
    (study_dir / "study.md").write_text(study_markdown(results, leave_out))
    plot_study(results, study_dir)
    return results
