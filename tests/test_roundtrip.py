"""Train a tiny model, export it, and classify a stack with process.py: the whole product, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from tests.amibr_fixture import make_patch, train_and_export
from training.cli import main as training_cli
from training.export import ExportError, check_parity, load_member

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(run folder, model folder) of a 2-fold, 1-epoch run on a tiny AMi-Br-shaped dataset."""
    return train_and_export(tmp_path_factory.mktemp("roundtrip"), "tiny")


def test_run_folder_is_self_describing(exported):
    run_dir, _ = exported
    for fold in ("fold_0", "fold_1"):
        for name in ("config.yaml", "model_args.json", "model.safetensors", "metrics.csv", "oof_predictions.csv", "summary.json"):
            assert (run_dir / fold / name).is_file(), f"{fold}/{name}"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["oof"]["n"] == 48  # every sample predicted exactly once, out of fold
    for name in ("results.md", "roc.png", "learning_curves.png", "per_domain.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert f"{results['oof']['threshold']:.4f}" in (run_dir / "results.md").read_text()
    split = json.loads((run_dir / "split.json").read_text())
    assert not set(split["folds"][0]["val_slides"]) & set(split["folds"][1]["val_slides"])


def test_model_json_describes_the_graph(exported):
    run_dir, model_dir = exported
    spec = json.loads((model_dir / "model.json").read_text())
    graph = onnx.load(str(model_dir / spec["onnx"]))
    assert [i.name for i in graph.graph.input] == [spec["input"]["name"]] == ["patches"]
    assert [o.name for o in graph.graph.output] == [spec["output"]["name"]] == ["p_atypical"]
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert len(spec["members"]) == 2 and spec["tta_views"] == ["identity", "vflip"]
    run_oof = json.loads((run_dir / "results.json").read_text())["oof"]["at_threshold"]
    # chosen on the calibrated probabilities: a monotone map of the run's, so the same classes
    assert spec["metrics"]["oof"]["at_threshold"]["balanced_accuracy"] == pytest.approx(run_oof["balanced_accuracy"])
    assert spec["metrics"]["oof"]["at_threshold"]["roc_auc"] == pytest.approx(run_oof["roc_auc"])
    assert spec["metrics"]["export_parity_max_abs_difference"] < 1e-4
    # the exporter's per-node debug records (source stack traces, with the exporting machine's paths) are gone
    assert not [node.name for node in graph.graph.node if node.metadata_props]
    assert str(Path(__file__).resolve().parents[1]).encode() not in (model_dir / spec["onnx"]).read_bytes()
    import hashlib

    assert spec["onnx_sha256"] == hashlib.sha256((model_dir / spec["onnx"]).read_bytes()).hexdigest()


def test_process_py_gives_the_torch_ensemble_probabilities(exported, make_case, tmp_path):
    run_dir, model_dir = exported
    rng = np.random.default_rng(5)
    pages = np.stack([make_patch(rng, atypical=i % 2 == 0) for i in range(5)])
    output_dir = tmp_path / "output"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "process.py"), "--input", str(make_case(pages)), "--output", str(output_dir),
         "--model", str(model_dir)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = json.loads((output_dir / "multiple-mitotic-figure-classification.json").read_text())

    from training.ensemble import EnsembleClassifier, Preprocess

    members = [load_member(run_dir / f"fold_{k}") for k in (0, 1)]
    calibration = json.loads((model_dir / "model.json").read_text())["calibration"]
    ensemble = EnsembleClassifier([m[0] for m in members], [Preprocess.from_args(m[1]) for m in members],
                                  temperature=calibration["temperature"], bias=calibration["bias"]).eval()
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(pages)).numpy()
    threshold = json.loads((model_dir / "model.json").read_text())["threshold"]
    assert [r["confidence"] for r in result] == pytest.approx(expected.tolist(), abs=1e-4)
    assert [r["class"] for r in result] == ["atypical" if p >= threshold else "normal" for p in expected]


def test_parity_check_fails_loudly_on_a_wrong_graph(exported, tmp_path):
    run_dir, model_dir = exported
    spec = json.loads((model_dir / "model.json").read_text())
    members = [load_member(run_dir / "fold_0")]
    from training.ensemble import EnsembleClassifier, Preprocess

    only_fold_0 = EnsembleClassifier([members[0][0]], [Preprocess.from_args(members[0][1])]).eval()
    patches = np.stack([make_patch(np.random.default_rng(i), atypical=bool(i % 2)) for i in range(4)])
    with pytest.raises(ExportError, match="disagree"):  # the 2-member graph is not the 1-member network
        check_parity(only_fold_0, model_dir / spec["onnx"], patches)


def test_export_refuses_a_folder_that_is_not_a_fold(tmp_path):
    assert training_cli(["export", str(tmp_path), "--out", str(tmp_path / "model")]) == 1
    assert not (tmp_path / "model").exists()


# ---------------------------------------------------------------------------------------------
# no path that lets a number flatter itself


def test_model_json_records_what_each_member_held_out(exported):
    from training.splits import fold_fingerprint, load_split, split_fingerprint

    run_dir, model_dir = exported
    split = load_split(run_dir / "split.json")
    members = json.loads((model_dir / "model.json").read_text())["members"]
    assert [m["fold_sha256"] for m in members] == [fold_fingerprint(split, k) for k in (0, 1)]
    assert {m["split_sha256"] for m in members} == {split_fingerprint(split)}


def test_evaluate_refuses_a_fold_that_members_trained_on(exported, tmp_path):
    from training.evaluate import check_members_held_out
    from training.splits import load_split

    run_dir, model_dir = exported
    split = load_split(run_dir / "split.json")
    with pytest.raises(ValueError, match=r"member 1 \(resnet10t_slim, fold 1\) .* may have trained on fold 0"):
        check_members_held_out(model_dir, split, 0)  # the 2-member ensemble: fold 1's member trained on fold 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    arguments = ["evaluate", "--model", str(model_dir), "--data-kind", "amibr", "--data-root", config["data"]["root"],
                 "--split", str(run_dir / "split.json"), "--fold", "0", "--out", str(tmp_path / "eval")]
    assert training_cli(arguments) == 1 and not (tmp_path / "eval").exists()
    fold_0 = tmp_path / "fold0-model"
    assert training_cli(["export", str(run_dir / "fold_0"), "--out", str(fold_0), "--name", "f0"]) == 0
    check_members_held_out(fold_0, split, 0)
    with pytest.raises(ValueError, match="held out other samples"):
        check_members_held_out(fold_0, split, 1)


def test_export_with_other_views_scores_the_out_of_fold_samples_again(exported, tmp_path):
    """model.json's out-of-fold numbers are those of the graph that ships, views included."""
    from inference.model import load_model, predict
    from training.data import load_images, read_amibr
    from training.metrics import binary_metrics

    run_dir, _ = exported
    model_dir = tmp_path / "dihedral"
    assert training_cli(["export", str(run_dir / "fold_1"), "--out", str(model_dir), "--name", "d8", "--dihedral"]) == 0
    spec = json.loads((model_dir / "model.json").read_text())
    assert spec["metrics"]["oof_views"] == spec["tta_views"] and len(spec["tta_views"]) == 8
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = [line.split(",") for line in (run_dir / "fold_1" / "oof_predictions.csv").read_text().splitlines()[1:]]
    by_id = {s.sample_id: s for s in read_amibr(config["data"]["root"])}
    samples = [by_id[row[0]] for row in rows]
    probabilities = predict(load_model(model_dir=model_dir), load_images(samples))
    labels = np.array([s.label for s in samples])
    expected = binary_metrics(labels, probabilities.astype(np.float64), spec["threshold"])
    assert spec["metrics"]["oof"]["n"] == len(samples)
    assert spec["metrics"]["oof"]["at_threshold"]["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert spec["metrics"]["oof"]["at_threshold"]["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])


def test_pooling_refuses_a_sample_scored_twice(exported):
    from training.crossval import pooled_oof

    run_dir, _ = exported
    with pytest.raises(ValueError, match="scored twice"):
        pooled_oof([run_dir / "fold_0", run_dir / "fold_1", run_dir / "fold_0"])


def test_a_run_keeps_the_split_its_folds_were_trained_on(exported, tmp_path):
    import shutil

    from training.splits import load_split, save_split

    run_dir = tmp_path / "run"
    shutil.copytree(exported[0], run_dir)
    config = run_dir / "config.yaml"
    other = load_split(run_dir / "split.json")
    other["folds"] = other["folds"][::-1]  # the same folds, numbered the other way round
    save_split(other, tmp_path / "other.json")
    arguments = ["train", "--config", str(config), "--out", str(run_dir), "--quiet"]
    assert training_cli(arguments + ["--split", str(tmp_path / "other.json")]) == 1
    assert load_split(run_dir / "split.json") != other  # the run's own split is untouched
    save_split(other, run_dir / "split.json")  # a split.json swapped by hand under finished folds
    with pytest.raises(ValueError, match="finished on another split"):
        from training.config import load_config
        from training.crossval import run_crossval

        run_crossval(load_config(str(config)), run_dir, show_progress=False)


def test_evaluate_refuses_samples_from_slides_the_members_trained_on(exported, tmp_path):
    """Without --fold too: model.json lists digests of every training slide, and evaluate checks them."""
    from training.splits import load_split, slide_digest

    run_dir, model_dir = exported
    data_root = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
    digests = json.loads((model_dir / "model.json").read_text())["training"]["slide_digests"]
    split = load_split(run_dir / "split.json")
    assert set(digests) == {slide_digest(s) for fold in split["folds"] for s in fold["val_slides"]}  # both folds
    whole = ["evaluate", "--model", str(model_dir), "--data-kind", "amibr", "--data-root", data_root,
             "--out", str(tmp_path / "whole")]
    assert training_cli(whole) == 1 and not (tmp_path / "whole").exists()  # the ensemble trained on every slide
    fold_0 = tmp_path / "fold0-model"
    assert training_cli(["export", str(run_dir / "fold_0"), "--out", str(fold_0), "--name", "f0"]) == 0
    held_out = ["evaluate", "--model", str(fold_0), "--data-kind", "amibr", "--data-root", data_root,
                "--split", str(run_dir / "split.json"), "--fold", "0", "--out", str(tmp_path / "f0")]
    assert training_cli(held_out) == 0
    metrics = json.loads((tmp_path / "f0" / "metrics.json").read_text())
    assert metrics["held_out"].startswith("proven") and metrics["n"] == len(split["folds"][0]["val_ids"])


def test_export_puts_a_fitted_calibration_in_the_graph_unless_told_not_to(exported, tmp_path):
    run_dir, model_dir = exported
    calibration = json.loads((model_dir / "model.json").read_text())["calibration"]
    assert calibration["temperature"] > 0 and calibration["fitted_on"] == "pooled out-of-fold scores, n = 48"
    assert calibration["map"] == "sigmoid(score / temperature + bias)" and isinstance(calibration["bias"], float)
    for key in ("ece_before", "ece_after", "ece_after_cross_fitted"):
        assert 0 <= calibration[key] <= 1
    assert (run_dir / "calibration_tiny.png").stat().st_size > 0
    plain = tmp_path / "plain"
    assert training_cli(["export", str(run_dir), "--out", str(plain), "--name", "plain", "--no-calibration"]) == 0
    assert json.loads((plain / "model.json").read_text())["calibration"] == {"temperature": 1.0, "bias": 0.0,
                                                                               "fitted_on": "not calibrated"}


def test_half_weights_halve_the_file_and_keep_float32_arithmetic(exported, tmp_path):
    run_dir, model_dir = exported
    half = tmp_path / "half"
    assert training_cli(["export", str(run_dir), "--out", str(half), "--name", "half", "--half-weights"]) == 0
    spec = json.loads((half / "model.json").read_text())
    assert spec["weight_storage"] == "float16" and spec["precision"] == "float32"
    graph = onnx.load(str(half / spec["onnx"]))
    large = {t.data_type for t in graph.graph.initializer if np.prod(t.dims) >= 1024}  # the kernels
    assert large == {onnx.TensorProto.FLOAT16}
    full = model_dir / json.loads((model_dir / "model.json").read_text())["onnx"]
    assert (half / spec["onnx"]).stat().st_size < 0.6 * full.stat().st_size
    patches = np.stack([make_patch(np.random.default_rng(i), atypical=bool(i % 2)) for i in range(8)])
    import onnxruntime

    outputs = [onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
               .run(None, {"patches": patches})[0] for path in (full, half / spec["onnx"])]
    assert outputs[1].dtype == np.float32
    assert 0 < np.abs(outputs[1] - outputs[0]).max() < 5e-3  # rounded weights: close, not the same
    assert 0 < spec["metrics"]["export_parity_max_abs_difference"] < 5e-3
    both = ["export", str(run_dir), "--out", str(tmp_path / "both"), "--half-weights", "--fp16"]
    assert training_cli(both) == 1 and not (tmp_path / "both").exists()
