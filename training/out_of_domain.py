"""What an exported model's recipe does on a source it never saw: the study's leave-one-domain-out runs.

The out-of-fold metrics in model.json are measured on held-out slides of the sources the members
trained on. A lab scoring patches from another scanner, tumour or centre should expect less, and
the best estimate the project has is a study's leave-one-domain-out runs of the same recipe:
trained on every source but one, scored on that one. `out_of_domain_metrics` reads those runs
from a study folder (`<study>/lodo_<key>/<config>/`, written by `python -m training study
--leave-out <key>`) and returns what export records as `metrics.out_of_domain`.

Those runs are other trainings of the exported members' configs, not the members themselves: the
record says so. Each left-out source's balanced accuracy, sensitivity and specificity are at a
threshold chosen on the other runs' left-out sources (the study's rule), since a run has no
out-of-fold scores of its own sources to choose one on.
"""

from pathlib import Path

from training.crossval import fold_dirs, fold_recipe_differences
from training.splits import load_split
from training.study import leave_one_out_metrics, with_split


class OutOfDomainError(ValueError):
    """The study's leave-one-domain-out runs cannot stand for the exported members' recipe."""


def out_of_domain_metrics(study_dir: Path, member_configs) -> dict:
    """Per domain key and left-out value, the recipe's metrics from `study_dir`'s leave-one-out runs.

    `member_configs`: the exported members' ExperimentConfigs. Every config among them must have a
    finished leave-one-out run of the same recipe in each `lodo_<key>` folder; several configs are
    pooled as the graph pools them (scores averaged per patch).
    """
    study_dir = Path(study_dir)
    lodo_dirs = sorted(path for path in study_dir.glob("lodo_*") if (path / "split.json").is_file())
    if not lodo_dirs:
        raise OutOfDomainError(f"{study_dir}: no leave-one-out runs (lodo_<key>/split.json); run "
                               "`python -m training study --configs <config> --leave-out dataset --out <this folder>`")
    configs = {config.name: config for config in member_configs}
    result = {}
    for lodo_dir in lodo_dirs:
        key = lodo_dir.name.removeprefix("lodo_")
        n_folds = len(load_split(lodo_dir / "split.json")["folds"])
        runs = [_finished_run(lodo_dir / name, config, key, n_folds) for name, config in sorted(configs.items())]
        result[key] = leave_one_out_metrics(lodo_dir, runs, key)
    return {"estimate_of": "the exported recipe on a source its members never saw",
            "how": "leave-one-out runs of the members' configs (other trainings, not the shipped members): each "
                   "trained on every value of the key but one and scored on that one; one run per value. "
                   "Balanced accuracy, sensitivity and specificity at a threshold chosen on the other runs' "
                   "left-out patches",
            "study": study_dir.name, "configs": sorted(configs), "per_left_out": result}


def _finished_run(run_dir: Path, config, key: str, n_folds: int) -> Path:
    """`run_dir` if it finished its `n_folds` folds with `config` as the study trains it, leaving out `key`."""
    folds = fold_dirs(run_dir)
    if len(folds) != n_folds:
        raise OutOfDomainError(f"{run_dir}: {len(folds)} of {n_folds} leave-one-out folds finished; "
                               "finish them with the study command that started them")
    as_trained = with_split(config, leave_out=key)
    for fold_dir in folds:
        differences = fold_recipe_differences(fold_dir, as_trained)  # as a resumed run checks a finished fold
        if differences:
            raise OutOfDomainError(f"{fold_dir} trained another recipe than the exported members' "
                                   f"({'; '.join(differences)}); its results do not stand for this model")
    return run_dir
