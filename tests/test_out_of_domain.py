"""`export --out-of-domain`: model.json says what the recipe did on the sources its study left out."""

import json

import pytest
import yaml

from tests.amibr_fixture import write_amibr
from training.cli import main as training_cli


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(study folder, config name): a 2-fold, 1-epoch study of one config, with leave-one-dataset-out."""
    work = tmp_path_factory.mktemp("out_of_domain")
    data = write_amibr(work / "amibr", n_slides=6, per_slide=8)
    config = {"name": "tiny", "backbone": "resnet10t_slim", "input_crop": 64,
              "data": {"kind": "amibr", "root": str(data)},
              "split": {"n_folds": 2}, "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 2}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = work / "study"
    assert training_cli(["study", "--configs", str(work / "tiny.yaml"), "--out", str(out), "--leave-out", "dataset",
                         "--quiet"]) == 0
    return out, "tiny"


def test_model_json_carries_the_study_s_leave_one_out_results(study, tmp_path):
    out, name = study
    model = tmp_path / "model"
    assert training_cli(["export", str(out / name), "--out", str(model), "--out-of-domain", str(out)]) == 0
    record = json.loads((model / "model.json").read_text())["metrics"]["out_of_domain"]
    assert record["configs"] == [name] and "not the shipped members" in record["how"]
    reported = json.loads((out / "study.json").read_text())["leave_one_out"][name]  # the study's own table
    per_source = record["per_left_out"]["dataset"]
    assert set(per_source) == set(reported) == {"MIDOG21", "TUPAC16"}
    for source, metrics in per_source.items():
        assert metrics["roc_auc"] == pytest.approx(reported[source]["roc_auc"])
        assert metrics["balanced_accuracy"] == pytest.approx((metrics["sensitivity"] + metrics["specificity"]) / 2)
        assert metrics["balanced_accuracy"] == pytest.approx(reported[source]["balanced_accuracy"])
        assert 0 < metrics["n_atypical"] < metrics["n"]


def test_export_refuses_leave_one_out_runs_of_another_recipe(study, tmp_path, capsys):
    out, name = study
    fold_config = out / "lodo_dataset" / name / "fold_1" / "config.yaml"
    original = fold_config.read_text()
    changed = yaml.safe_load(original)
    changed["optim"]["lr"] = 0.5
    fold_config.write_text(yaml.safe_dump(changed))
    try:
        arguments = ["export", str(out / name), "--out", str(tmp_path / "model"), "--out-of-domain", str(out)]
        assert training_cli(arguments) == 1
    finally:
        fold_config.write_text(original)
    assert "optim.lr: 0.5 -> 0.001" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()  # refused before anything is written


def test_export_refuses_a_study_without_leave_one_out_runs(study, tmp_path, capsys):
    out, name = study
    arguments = ["export", str(out / name), "--out", str(tmp_path / "model"), "--out-of-domain", str(out / name)]
    assert training_cli(arguments) == 1
    assert "no leave-one-out runs" in capsys.readouterr().err and not (tmp_path / "model").exists()
