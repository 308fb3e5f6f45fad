"""`training study`: configs on one split, paired differences, leave-one-domain-out, resume."""

import json

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from tests.amibr_fixture import write_amibr
from training.cli import main as training_cli
from training.metrics import best_threshold
from training.report import study_markdown
from training.study import pooled_runs
from training.statistics import compare, per_fold_metrics, t_interval, verdict
from training.train import read_oof


def table(labels, probabilities, folds):
    return {"ids": [str(i) for i in range(len(labels))], "labels": np.array(labels),
            "probabilities": np.array(probabilities, dtype=float), "folds": np.array([str(f) for f in folds])}


def test_per_fold_balanced_accuracy_uses_a_threshold_from_the_other_folds():
    labels = [0, 1, 0, 1, 0, 1]
    probabilities = [0.2, 0.6, 0.3, 0.7, 0.65, 0.9]
    metrics = per_fold_metrics(table(labels, probabilities, [0, 0, 1, 1, 2, 2]))
    assert set(metrics) == {"0", "1", "2"}
    others = [0.3, 0.7, 0.65, 0.9]  # fold 0's threshold comes from folds 1 and 2 only
    assert min(others[0], others[2]) < metrics["0"]["threshold"] <= max(others[1], others[3])


def test_paired_differences_and_their_intervals():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    folds = np.arange(400) % 5
    base = np.clip(0.2 * labels + rng.normal(0.4, 0.2, 400), 0, 1)
    better = np.clip(0.5 * labels + rng.normal(0.25, 0.2, 400), 0, 1)
    difference = compare(table(labels, base, folds), table(labels, better, folds))
    auc = difference["roc_auc"]
    assert len(auc["per_fold"]) == 5 and auc["mean"] > 0.1
    assert auc["t_interval_95"][0] > 0 and auc["pooled_bootstrap_95"][0] > 0
    assert verdict(auc).startswith("better")
    same = compare(table(labels, base, folds), table(labels, base, folds))["roc_auc"]
    assert same["mean"] == 0 and verdict({**same, "t_interval_95": [-0.01, 0.01]}).startswith("no detectable")
    with pytest.raises(ValueError, match="same patches"):
        compare(table(labels, base, folds), table(labels[:-1], base[:-1], folds[:-1]))


def test_t_interval_matches_the_textbook_formula():
    low, high = t_interval([0.01, 0.03, -0.01, 0.02, 0.00])
    assert (low + high) / 2 == pytest.approx(0.01)
    assert high - low == pytest.approx(2 * 2.7764451 * np.std([0.01, 0.03, -0.01, 0.02, 0.00], ddof=1) / np.sqrt(5), rel=1e-4)


def test_a_study_trains_both_configs_on_one_split_and_reports(tmp_path, capsys):
    data = write_amibr(tmp_path / "amibr", n_slides=6, per_slide=8)
    base = {"backbone": "resnet10t_slim", "input_crop": 64, "data": {"kind": "amibr", "root": str(data)},
            "split": {"n_folds": 2}, "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 2}}
    paths = []
    for name, lr in (("slow", 0.0005), ("fast", 0.003)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "name": name, "optim": {**base["optim"], "lr": lr}}))
        paths.append(str(path))
    out = tmp_path / "study"
    arguments = ["study", "--configs", *paths, "--out", str(out), "--leave-out", "dataset", "--quiet"]
    assert training_cli(arguments) == 0
    results = json.loads((out / "study.json").read_text())
    assert list(results["runs"]) == ["slow", "fast"] and results["baseline"] == "slow"
    assert len(results["differences"]["fast"]["roc_auc"]["per_fold"]) == 2
    assert set(results["leave_one_out"]["fast"]) == {"MIDOG21", "TUPAC16"}
    split = json.loads((out / "split.json").read_text())
    for name in ("slow", "fast"):  # both configs on the one split
        assert json.loads((out / name / "split.json").read_text()) == split
    markdown = (out / "study.md").read_text()
    assert "Paired differences" in markdown and "Leave one dataset out" in markdown
    assert "(all 2 folds; out-of-fold n = 48 patches" in markdown
    assert (out / "study_folds.png").is_file() and (out / "study_differences.png").is_file()
    cv = results["runs"]["fast"]["roc_auc"]["mean"]
    lodo = np.mean([m["roc_auc"] for m in results["leave_one_out"]["fast"].values()])
    assert f"| fast | {cv:.3f} | {lodo:.3f} | {(cv + lodo) / 2:.3f} |" in markdown  # docs/recipes.md's score
    assert results["selection"]["fast"]["score"] == pytest.approx((cv + lodo) / 2)  # unrounded, in study.json
    # several variants: one differences table, every verdict after it
    for part in ("runs", "differences", "leave_one_out"):
        results[part]["fast_again"] = results[part]["fast"]
    table = study_markdown(results, "dataset").split("## Paired differences")[1].split("\n\n")[1]
    assert table.count("| fast") == 4 and "`fast`" not in table

    stamp = (out / "fast" / "fold_0" / "model.safetensors").stat().st_mtime_ns
    assert training_cli(arguments) == 0  # a rerun resumes: nothing is trained again
    assert (out / "fast" / "fold_0" / "model.safetensors").stat().st_mtime_ns == stamp
    moved = tmp_path / "elsewhere"  # another machine's data path trains the same recipe: still resumed
    data.rename(moved)
    assert training_cli([*arguments, "--data-root", str(moved)]) == 0
    assert (out / "fast" / "fold_0" / "model.safetensors").stat().st_mtime_ns == stamp
    moved.rename(data)
    # another recipe must not reuse these folds as its own
    assert training_cli([*arguments, "--seed", "1"]) == 1
    assert "optim.seed: 0 -> 1" in capsys.readouterr().err
    assert yaml.safe_load((out / "slow" / "config.yaml").read_text())["optim"]["seed"] == 0  # nothing rewritten
    assert (out / "fast" / "fold_0" / "model.safetensors").stat().st_mtime_ns == stamp

    # an ensemble row: both runs' scores averaged per patch, as the exported graph averages its members
    assert training_cli(["study", "--configs", *paths, "slow+fast", "--out", str(out), "--leave-out", "dataset",
                         "--quiet"]) == 0  # every run is finished: nothing trained, the report now has three rows
    assert (out / "fast" / "fold_0" / "model.safetensors").stat().st_mtime_ns == stamp
    results = json.loads((out / "study.json").read_text())
    assert list(results["runs"]) == ["slow", "fast", "slow+fast"] and not (out / "slow+fast").exists()
    slow, fast = ({row["sample_id"]: row for row in read_oof(out / name / "oof_predictions.csv")}
                  for name in ("slow", "fast"))
    for fold, metrics in results["runs"]["slow+fast"]["per_fold"].items():
        ids = [i for i, row in slow.items() if str(row["fold"]) == fold]
        averaged = [(slow[i]["score"] + fast[i]["score"]) / 2 for i in ids]
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score([slow[i]["label"] for i in ids], averaged))
    pooled = pooled_runs([out / "slow", out / "fast"])
    assert {i: row["score"] for i, row in pooled.items()} == pytest.approx(
        {i: (slow[i]["score"] + fast[i]["score"]) / 2 for i in slow})
    assert any(slow[i]["score"] != fast[i]["score"] for i in slow)  # two members that differ
    assert len(results["differences"]["slow+fast"]["roc_auc"]["per_fold"]) == 2
    assert set(results["leave_one_out"]["slow+fast"]) == {"MIDOG21", "TUPAC16"}
    assert "| slow+fast | roc auc |" in (out / "study.md").read_text()
    recorded = json.loads((out / "slow" / "results.json").read_text())["oof"]["per_domain"]
    assert results["runs"]["slow"]["per_domain"] == recorded  # a single run: as its own results.json
    threshold = results["runs"]["slow+fast"]["per_domain"]["dataset"]["MIDOG21"]["threshold"]
    assert threshold == pytest.approx(best_threshold(np.array([r["label"] for r in pooled.values()]),
                                                     np.array([r["probability"] for r in pooled.values()])))
    for source, metrics in results["runs"]["slow+fast"]["per_domain"]["dataset"].items():  # the ensemble's own scores
        ids = [i for i, row in slow.items() if i.startswith(source)]
        assert metrics["n"] == len(ids) > 0
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score([slow[i]["label"] for i in ids],
                                                                 [pooled[i]["score"] for i in ids]))
    assert "## Per dataset: slow+fast" in (out / "study.md").read_text()

    # a config added later on fewer folds (--folds) is paired with the others on the folds they share
    third = tmp_path / "third.yaml"
    third.write_text(yaml.safe_dump({**base, "name": "third"}))
    assert training_cli(["study", "--configs", paths[0], str(third), "--out", str(out), "--folds", "1", "--quiet"]) == 0
    results = json.loads((out / "study.json").read_text())
    assert results["coverage"]["folds_trained"] == ["1"]
    assert results["coverage"]["folds_trained_per_config"] == {"slow": ["0", "1"], "third": ["1"]}
    assert results["coverage"]["n"] == 24 and len(results["differences"]["third"]["roc_auc"]["per_fold"]) == 1
    assert list(results["runs"]["slow"]["per_fold"]) == ["0", "1"]  # each run summarised on all its folds
    markdown = (out / "study.md").read_text()
    assert "Not every config trained every fold (`slow`: folds 0, 1)" in markdown
    assert "| third | roc auc | - | " in markdown
    # an ensemble of runs that trained different folds would score some patches with fewer members
    assert training_cli(["study", "--configs", paths[0], f"slow+{third}", "--out", str(out), "--folds", "1",
                         "--quiet"]) == 1
    assert "must have trained the same folds" in capsys.readouterr().err
