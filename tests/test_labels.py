"""Expert votes as labels (`labels: soft`): readers keep the vote share, training learns it, metrics stay majority."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.amibr_fixture import write_amibr
from tests.test_data import midog_row, write_midog25
from training.config import config_from_dict
from training.data import load_images, read_amibr, read_dataset, read_folder, targets_of
from training.splits import make_split
from training.train import Distributed, _Trainer, focal_loss, soft_label_loss, train_fold


def set_third_expert(root, flip_every: int) -> None:
    """In a fixture AMI-BR.csv, let the third expert disagree with the other two on every `flip_every`-th row."""
    path = root / "AMI-BR.csv"
    rows = list(csv.reader(path.open()))
    column = rows[0].index("expert3_atypical")
    for index, row in enumerate(rows[1:]):
        if index % flip_every == 0:
            row[column] = str(row[column] != "True")
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_amibr_reader_keeps_the_share_of_experts_voting_atypical(tmp_path):
    root = write_amibr(tmp_path / "amibr", n_slides=2, per_slide=6)
    set_third_expert(root, flip_every=2)
    samples = read_amibr(root)
    for index, sample in enumerate(samples):
        unanimous = float(sample.label)
        disputed = 2 / 3 if sample.label else 1 / 3
        assert sample.atypical_share == pytest.approx(disputed if index % 2 == 0 else unanimous)


def test_midog25_reader_counts_only_the_votes_given(tmp_path):
    split_vote = midog_row("2.png", "202.tiff", "AMF")
    split_vote[8:11] = ["AMF", "NMF", ""]  # two experts, one each way; the third did not vote
    root = write_midog25(tmp_path, [midog_row("1.png", "201.tiff", "NMF"), split_vote])
    first, second = read_dataset("midog25", root)
    assert (first.atypical_share, second.atypical_share) == (0.0, 0.5)


def test_targets_are_majority_labels_or_vote_shares_with_a_line_for_missing_votes(tmp_path, capsys):
    root = write_amibr(tmp_path / "amibr", n_slides=2, per_slide=6)
    set_third_expert(root, flip_every=3)
    samples = read_amibr(root)
    np.testing.assert_array_equal(targets_of(samples, "majority"), [s.label for s in samples])
    np.testing.assert_allclose(targets_of(samples, "soft"), [s.atypical_share for s in samples])
    assert capsys.readouterr().out == ""
    folder = tmp_path / "folder"
    for sample in samples[:4]:
        (folder / ("atypical" if sample.label else "normal")).mkdir(parents=True, exist_ok=True)
        (folder / ("atypical" if sample.label else "normal") / sample.path.name).write_bytes(sample.path.read_bytes())
    without_votes = read_folder(folder)
    np.testing.assert_array_equal(targets_of(without_votes, "soft"), [s.label for s in without_votes])
    assert "soft: 4 of 4 samples carry no expert votes; their majority label is their target" in capsys.readouterr().out
    with pytest.raises(ValueError, match="labels must be one of"):
        targets_of(samples, "mean")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_loss_on_hard_targets_is_the_class_weighted_cross_entropy(smoothing):
    logits = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 3 == 0
    class_weight = torch.tensor([0.6, 2.5])
    expected = F.cross_entropy(logits, labels.long(), weight=class_weight, label_smoothing=smoothing)
    got = soft_label_loss(logits, labels.float(), labels.long(), class_weight, smoothing)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_soft_focal_loss_on_hard_targets_is_the_focal_loss(gamma):
    logits = torch.randn(32, 2, generator=torch.Generator().manual_seed(1)) * 3
    labels = torch.arange(32) % 3 == 0
    class_weight = torch.tensor([0.6, 2.5])
    expected = focal_loss(logits, labels.long(), class_weight, gamma)
    got = soft_label_loss(logits, labels.float(), labels.long(), class_weight, gamma=gamma)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() < soft_label_loss(logits, labels.float(), labels.long(), class_weight).item()


def test_soft_loss_is_smallest_where_p_atypical_equals_the_share():
    shares = torch.tensor([1 / 3, 2 / 3])
    losses = {score: soft_label_loss(torch.tensor([[0.0, score], [0.0, score]]), shares, torch.tensor([0, 1])).item()
              for score in np.linspace(-3, 3, 61)}
    best = min(losses, key=losses.get)
    assert abs(best) < 0.11  # logit 0: P = 0.5, the mean of the two shares


def test_a_fold_trains_on_vote_shares_and_reports_majority_metrics(tmp_path):
    root = write_amibr(tmp_path / "amibr", n_slides=6, per_slide=8)
    set_third_expert(root, flip_every=2)
    samples = read_amibr(root)
    values = {"name": "soft", "backbone": "resnet10t_slim", "input_crop": 64, "labels": "soft",
              "data": {"kind": "amibr", "root": str(root)},
              "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 2}}
    split = make_split(samples, n_folds=2, seed=0)
    summary = train_fold(config_from_dict(values), samples, load_images(samples), split, 0, tmp_path / "fold",
                         show_progress=False)
    assert np.isfinite(summary["val_metrics_at_0_5"]["roc_auc"])
    labels = [int(row.split(",")[2]) for row in (tmp_path / "fold" / "oof_predictions.csv").read_text().splitlines()[1:]]
    assert set(labels) <= {0, 1}  # scored against the majority label, never the share
    assert json.loads(json.dumps(summary))["n_train"] > 0
    focal = {**values, "optim": {**values["optim"], "loss": "focal"}}  # the binary focal loss of the shares
    summary = train_fold(config_from_dict(focal), samples, load_images(samples), split, 0, tmp_path / "focal",
                         show_progress=False)
    assert np.isfinite(summary["val_metrics_at_0_5"]["roc_auc"])


def test_a_soft_label_config_with_focal_loss_trains_on_the_soft_focal_loss():
    """`labels: soft` with `optim.loss: focal`: the vote shares' binary focal loss, not their cross-entropy."""
    config = config_from_dict({"name": "soft-focal", "backbone": "resnet10t_slim", "labels": "soft",
                               "optim": {"loss": "focal", "focal_gamma": 2.0}})
    labels = np.array([0, 0, 0, 1])
    trainer = _Trainer(config, labels, steps_per_epoch=1, device=torch.device("cpu"), distributed=Distributed())
    logits = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    targets, majority = torch.tensor([0.0, 1 / 3, 0.0, 2 / 3]), torch.from_numpy(labels)
    got = trainer.loss(logits, majority, targets).item()
    assert got == pytest.approx(soft_label_loss(logits, targets, majority, trainer.class_weight, gamma=2.0).item())
    assert got != pytest.approx(soft_label_loss(logits, targets, majority, trainer.class_weight).item())
