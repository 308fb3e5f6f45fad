"""Threshold rules, and the command that tests whether a rule's threshold transfers to unseen slides."""

import csv
import json

import numpy as np
import pytest
import yaml

from tests.amibr_fixture import write_amibr
from training.cli import main as training_cli
from training.data import DataError, config_samples
from training.config import DataConfig
from training.metrics import best_threshold, binary_metrics
from training.thresholds import RULES, rule_thresholds


def test_each_rule_computes_what_it_says():
    rng = np.random.default_rng(0)
    labels = (rng.random(600) < 0.25).astype(int)
    folds = np.arange(600) % 3
    probabilities = np.clip(0.35 * labels + rng.normal(0.3, 0.15, 600) + 0.05 * folds, 0, 1)
    rules = rule_thresholds(labels, probabilities, folds)
    assert set(rules) == set(RULES)
    assert rules["prevalence"] == pytest.approx(labels.mean())
    assert rules["oof_best"] == best_threshold(labels, probabilities)
    assert rules["fold_median"] == pytest.approx(
        np.median([best_threshold(labels[folds == f], probabilities[folds == f]) for f in range(3)]))


def test_excluded_slides_are_never_read(tmp_path):
    root = write_amibr(tmp_path / "amibr", n_slides=4, per_slide=3)
    every = config_samples(DataConfig(kind="amibr", root=str(root)))
    kept = config_samples(DataConfig(kind="amibr", root=str(root), exclude_slides=["slide_01.tif"]))
    assert len(kept) == len(every) - 3 and "slide_01.tif" not in {s.slide for s in kept}
    with pytest.raises(DataError, match="lacks"):
        config_samples(DataConfig(kind="amibr", root=str(root), exclude_slides=["slide_99.tif"]))


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    """The threshold-transfer command on a tiny dataset: 2 outer folds, 2 inner folds, 1 epoch."""
    work = tmp_path_factory.mktemp("transfer")
    data_root = write_amibr(work / "amibr", n_slides=8, per_slide=8)
    config = {"name": "tiny", "backbone": "resnet10t_slim", "input_crop": 64,
              "data": {"kind": "amibr", "root": str(data_root)}, "split": {"n_folds": 2, "seed": 0},
              "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 2}}
    config_path = work / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = work / "transfer"
    assert training_cli(["threshold-transfer", "--config", str(config_path), "--out", str(out), "--quiet"]) == 0
    return config_path, out


def test_no_member_saw_a_held_out_slide(transfer):
    _, out = transfer
    held = set(json.loads((out / "outer_split.json").read_text())["folds"][0]["val_slides"])
    inner_split = json.loads((out / "holdout_0" / "run" / "split.json").read_text())
    assert not held & {slide for fold in inner_split["folds"] for slide in fold["val_slides"]}
    assert not held & {row["slide"] for row in csv.DictReader(open(out / "holdout_0" / "run" / "oof_predictions.csv"))}
    scored = {row["slide"] for row in csv.DictReader(open(out / "holdout_0" / "held_out_config.csv"))}
    assert scored == held
    config = yaml.safe_load((out / "holdout_0" / "run" / "fold_0" / "config.yaml").read_text())
    assert set(config["data"]["exclude_slides"]) == held


def test_the_report_scores_each_rule_of_the_exported_model(transfer):
    _, out = transfer
    results = json.loads((out / "transfer.json").read_text())
    (group,) = results["groups"]
    for view_name in ("config", "dihedral"):
        view = group["views"][view_name]
        spec = json.loads((out / "holdout_0" / f"model_{view_name}" / "model.json").read_text())
        assert spec["tta_views"] == view["tta_views"]
        assert spec["threshold"] == spec["threshold_candidates"][spec["threshold_rule_name"]]
        rows = list(csv.DictReader(open(out / "holdout_0" / f"held_out_{view_name}.csv")))
        labels = np.array([int(r["label"]) for r in rows])
        probabilities = np.array([float(r["probability"]) for r in rows])
        for rule in RULES:
            entry = view["rules"][rule]
            assert entry["threshold"] == spec["threshold_candidates"][rule]
            again = binary_metrics(labels, probabilities, entry["threshold"])
            assert entry["balanced_accuracy"] == pytest.approx(again["balanced_accuracy"], abs=1e-5)
            assert entry["sensitivity"] == pytest.approx(again["sensitivity"], abs=1e-5)
            low, high = entry["intervals_95"]["balanced_accuracy"]
            assert low <= entry["balanced_accuracy"] <= high
            # no rule can beat the threshold chosen on the held-out labels themselves
            assert entry["balanced_accuracy"] <= view["best_on_held_out"]["balanced_accuracy"] + 1e-9
    assert results["transfers_best"] in RULES
    assert "Transfers best" in (out / "transfer.md").read_text()
    assert (out / "transfer.png").stat().st_size > 0


def test_a_held_out_group_outside_the_split_is_refused(transfer, tmp_path, capsys):
    config_path, _ = transfer
    assert training_cli(["threshold-transfer", "--config", str(config_path), "--out", str(tmp_path / "t"),
                         "--holdouts", "2", "--quiet"]) == 1
    assert "not folds of the 2-fold split" in capsys.readouterr().err


def test_export_uses_the_rule_it_is_asked_for(transfer, tmp_path):
    _, out = transfer
    run = out / "holdout_0" / "run"
    assert training_cli(["export", str(run), "--out", str(tmp_path / "m"), "--name", "m",
                         "--threshold-rule", "prevalence"]) == 0
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert spec["threshold_rule_name"] == "prevalence"
    assert spec["threshold"] == spec["threshold_candidates"]["prevalence"]
    assert spec["metrics"]["oof"]["at_threshold"]["threshold"] == spec["threshold"]


def test_the_prevalence_rule_needs_calibrated_probabilities(transfer, tmp_path, capsys):
    _, out = transfer
    assert training_cli(["export", str(out / "holdout_0" / "run"), "--out", str(tmp_path / "m"),
                         "--threshold-rule", "prevalence", "--no-calibration"]) == 1
    assert "calibrated" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_a_rerun_reuses_the_exports_of_unchanged_checkpoints_only(transfer):
    config_path, out = transfer
    graphs = {view: out / "holdout_0" / f"model_{view}" / f"holdout_0_{view}.onnx" for view in ("config", "dihedral")}
    stamps = {view: graph.stat().st_mtime_ns for view, graph in graphs.items()}
    before = json.loads((out / "transfer.json").read_text())
    assert training_cli(["threshold-transfer", "--config", str(config_path), "--out", str(out), "--quiet"]) == 0
    assert {view: graph.stat().st_mtime_ns for view, graph in graphs.items()} == stamps  # nothing exported again
    assert json.loads((out / "transfer.json").read_text())["groups"] == before["groups"]
    graphs["dihedral"].write_bytes(graphs["dihedral"].read_bytes()[:-1])  # a damaged graph is exported again
    assert training_cli(["threshold-transfer", "--config", str(config_path), "--out", str(out), "--quiet"]) == 0
    assert graphs["config"].stat().st_mtime_ns == stamps["config"]
    assert graphs["dihedral"].stat().st_mtime_ns != stamps["dihedral"]
    assert json.loads((out / "transfer.json").read_text())["groups"] == before["groups"]
