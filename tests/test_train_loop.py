"""The training loop: resume after a kill, losses, sampling, early stopping, logging, DDP."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

import training.train as train_module
from tests.amibr_fixture import write_amibr
from training.checkpoints import RESUME_FILE
from training.config import config_from_dict
from training.data import load_images, read_amibr
from training.splits import make_split
from training.train import Distributed, _epoch_order, focal_loss, shard_batches, train_fold

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "backbone": "resnet10t_slim", "input_crop": 64,
        "optim": {"epochs": 3, "batch_size": 8, "warmup_epochs": 0, "threads": 2}}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = write_amibr(tmp_path_factory.mktemp("amibr"), n_slides=6, per_slide=8)
    samples = read_amibr(root)
    return root, samples, load_images(samples), make_split(samples, n_folds=2, seed=0)


def tiny_config(root, **optim):
    values = {**TINY, "data": {"kind": "amibr", "root": str(root)}}
    values["optim"] = {**values["optim"], **optim}
    return config_from_dict(values)


def kill_in_the_second_epoch(train, monkeypatch) -> None:
    """Run `train()` with the training loop dying in its second epoch, as a killed job does; then restore it."""
    real_epoch, calls = train_module._epoch, []

    def dies_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_epoch", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(train_module, "_epoch", real_epoch)


def test_a_killed_fold_resumes_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    root, samples, images, split = tiny_data
    config = tiny_config(root)
    train_fold(config, samples, images, split, 0, tmp_path / "straight", show_progress=False)
    kill_in_the_second_epoch(lambda: train_fold(config, samples, images, split, 0, tmp_path / "killed",
                                                show_progress=False), monkeypatch)
    assert (tmp_path / "killed" / RESUME_FILE).is_file()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    summary = train_fold(config, samples, images, split, 0, tmp_path / "killed", show_progress=False)

    straight, resumed = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "killed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert summary["epochs_run"] == 3 and not (tmp_path / "killed" / RESUME_FILE).exists()
    assert len((tmp_path / "killed" / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_resume_refuses_a_changed_config(tiny_data, tmp_path, monkeypatch):
    root, samples, images, split = tiny_data

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    real_epoch = train_module._epoch
    calls = []

    def dies_second(*args, **kwargs):
        calls.append(1)
        return dies() if len(calls) == 2 else real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_epoch", dies_second)
    with pytest.raises(KeyboardInterrupt):
        train_fold(tiny_config(root), samples, images, split, 1, tmp_path, show_progress=False)
    monkeypatch.setattr(train_module, "_epoch", real_epoch)
    with pytest.raises(ValueError, match="another config; delete it"):
        train_fold(tiny_config(root, lr=0.01), samples, images, split, 1, tmp_path, show_progress=False)


def test_resume_refuses_another_split(tiny_data, tmp_path, monkeypatch):
    """A fold killed midway and resumed with another split would train on other slides: refused."""
    root, samples, images, split = tiny_data
    kill_in_the_second_epoch(lambda: train_fold(tiny_config(root), samples, images, split, 0, tmp_path,
                                                show_progress=False), monkeypatch)
    other = make_split(samples, n_folds=2, seed=3)
    assert other["folds"][0]["val_ids"] != split["folds"][0]["val_ids"]
    with pytest.raises(ValueError, match="another split"):
        train_fold(tiny_config(root), samples, images, other, 0, tmp_path, show_progress=False)


def test_focal_loss_is_weighted_cross_entropy_at_gamma_0_and_smaller_above():
    torch.manual_seed(0)
    logits, labels = torch.randn(32, 2), torch.randint(0, 2, (32,))
    weight = torch.tensor([0.6, 2.5])
    assert torch.allclose(focal_loss(logits, labels, weight, gamma=0.0), F.cross_entropy(logits, labels, weight=weight))
    confident = torch.stack([-5 * (2 * labels - 1).float(), 5 * (2 * labels - 1).float()], dim=1)
    assert focal_loss(confident, labels, weight, gamma=2.0) < 1e-3 * F.cross_entropy(confident, labels, weight=weight)


def test_balanced_sampler_draws_both_classes_equally_often():
    labels = torch.tensor([0] * 900 + [1] * 100)
    order = _epoch_order(labels, "balanced", torch.Generator().manual_seed(0))
    assert len(order) == 1000 and abs(labels[order].float().mean().item() - 0.5) < 0.05
    uniform = _epoch_order(labels, "uniform", torch.Generator().manual_seed(0))
    assert sorted(uniform.tolist()) == list(range(1000))
    with pytest.raises(ValueError, match="optim.sampler"):
        _epoch_order(labels, "weighted", torch.Generator())


def test_processes_get_disjoint_equal_shares_of_full_batches():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    shares = [shard_batches(order, 10, Distributed(rank, 3)) for rank in range(3)]
    assert [len(share) for share in shares] == [3, 3, 3]  # 10 full batches, 9 usable by 3 processes
    seen = torch.cat([batch for share in shares for batch in share]).tolist()
    assert len(seen) == len(set(seen)) == 90
    assert len(shard_batches(order, 10, Distributed())) == 10


def test_early_stopping_is_recorded_as_selection_on_validation(tiny_data, tmp_path):
    root, samples, images, split = tiny_data
    config = tiny_config(root, epochs=4, early_stopping_patience=1, loss="focal", sampler="balanced")
    summary = train_fold(config, samples, images, split, 0, tmp_path, show_progress=False)
    assert summary["selected_on_validation"] is True
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 4
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_torchrun_trains_a_fold_with_two_processes(tiny_data, tmp_path):
    root, *_ = tiny_data
    config = {**TINY, "data": {"kind": "amibr", "root": str(root)}, "split": {"n_folds": 2},
              "optim": {**TINY["optim"], "epochs": 2, "threads": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "training", "train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"),
               "--fold", "0", "--quiet"]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "fold_0" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["epochs_run"] == 2


def test_synthetic_images_close_the_class_gap_of_the_training_part_only(tiny_data, tmp_path):
    from PIL import Image

    from tests.amibr_fixture import make_patch
    from training.crossval import synthetic_for_fold
    from training.splits import fold_indices
    from training.synth.data import write_provenance

    root, samples, images, split = tiny_data
    fold_dir = tmp_path / "synth" / "fold_0"
    fold_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["image,label,slide,synthetic"]
    for index in range(40):
        Image.fromarray(make_patch(rng, True)).save(fold_dir / f"s{index}.png")
        rows.append(f"s{index}.png,atypical,synthetic:fold0,true")
    (fold_dir / "manifest.csv").write_text("\n".join(rows) + "\n")
    from training.splits import make_split, save_split

    save_split(make_split(samples, n_folds=3, seed=9), tmp_path / "synth" / "split.json")
    config = dataclasses.replace(tiny_config(root).synthetic, dir=str(tmp_path / "synth"))
    with pytest.raises(ValueError, match="made on another split"):
        synthetic_for_fold(dataclasses.replace(tiny_config(root), synthetic=config), samples, split, 0)
    save_split(split, tmp_path / "synth" / "split.json")

    config = dataclasses.replace(tiny_config(root), synthetic=dataclasses.replace(
        tiny_config(root).synthetic, dir=str(tmp_path / "synth"), ratio=0.5))
    with pytest.raises(FileNotFoundError, match="record of the generator"):
        synthetic_for_fold(config, samples, split, 0)
    (fold_dir / "finetune").mkdir()
    (fold_dir / "finetune" / "provenance.json").write_text('{"stage": "finetune", "fold": 0}')
    with pytest.raises(ValueError, match="generator version 1, this code is version"):
        synthetic_for_fold(config, samples, split, 0)  # drawn before the class label was made to count
    write_provenance(fold_dir / "finetune", {"stage": "finetune", "fold": 0})
    chosen = synthetic_for_fold(config, samples, split, 0)
    train, _ = fold_indices(split, samples, 0)
    train_labels = [samples[i].label for i in train]
    gap = train_labels.count(0) - train_labels.count(1)
    assert len(chosen) == round(0.5 * gap) and all(s.synthetic and s.label == 1 for s in chosen)
    with_synthetic = samples + chosen
    train, val = fold_indices(split, with_synthetic, 0)
    assert not any(with_synthetic[i].synthetic for i in val)
    assert sum(with_synthetic[i].synthetic for i in train) == len(chosen)
    with pytest.raises(FileNotFoundError, match="no synthetic images for fold 1"):
        synthetic_for_fold(config, samples, split, 1)
