"""Tests of the training package: metrics, config, augmentation, models, views."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.augment import AugmentConfig, augment_batch, dihedral
from training.config import config_from_dict, load_config
from training.ensemble import VIEWS, EnsembleClassifier, Preprocess, view_scores
from training.metrics import (
    best_threshold,
    binary_metrics,
    cross_validated_threshold_metrics,
)
from training.models import BACKBONES, FOUNDATION_MODELS, create_classifier, model_args

# --- metrics ------------------------------------------------------------------------------------

def test_binary_metrics_match_a_hand_count():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    probabilities = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.1, 0.3, 0.4])
    result = binary_metrics(labels, probabilities, 0.5)
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(4 / 5)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result["accuracy"] == pytest.approx(6 / 8)
    # ROC AUC by counting ranked pairs: atypical above normal.
    pairs = [(p, n) for p in probabilities[labels == 1] for n in probabilities[labels == 0]]
    assert result["roc_auc"] == pytest.approx(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs]))


def test_threshold_is_applied_as_greater_or_equal():
    result = binary_metrics(np.array([1, 0]), np.array([0.5, 0.49]), 0.5)
    assert result["sensitivity"] == 1.0 and result["specificity"] == 1.0


def test_best_threshold_maximises_balanced_accuracy_with_a_margin():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probabilities = np.clip(0.3 * labels + rng.normal(0.35, 0.15, 300), 0, 1)
    threshold = best_threshold(labels, probabilities)
    best = binary_metrics(labels, probabilities, threshold)["balanced_accuracy"]
    candidates = np.linspace(0, 1, 1001)
    assert best >= max(binary_metrics(labels, probabilities, t)["balanced_accuracy"] for t in candidates) - 1e-12
    assert not np.isclose(probabilities, threshold).any()  # halfway between scores, not on one


def test_cross_validated_threshold_is_no_better_than_the_in_sample_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    probabilities = np.clip(0.2 * labels + rng.normal(0.4, 0.2, 400), 0, 1)
    folds = np.arange(400) % 5
    honest = cross_validated_threshold_metrics(labels, probabilities, folds)
    in_sample = binary_metrics(labels, probabilities, best_threshold(labels, probabilities))
    assert honest["balanced_accuracy"] <= in_sample["balanced_accuracy"] + 1e-12
    assert cross_validated_threshold_metrics(labels, probabilities, np.zeros(400)) is None


# --- config -------------------------------------------------------------------------------------

CONFIG_DIR = Path(__file__).parents[1] / "training" / "configs"


@pytest.mark.parametrize("name", sorted(path.stem for path in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_load(name):
    config = load_config(name)
    assert config.name == name and config.backbone in BACKBONES and config.split.n_folds >= 2


def test_config_rejects_unknown_keys_with_their_place():
    with pytest.raises(ValueError, match=r"config\.optim: unknown keys \['epoch'\]"):
        config_from_dict({"optim": {"epoch": 3}})


# --- augmentation -------------------------------------------------------------------------------

def test_augment_keeps_shape_and_range_and_is_seeded():
    images = torch.rand(16, 3, 128, 128)
    first = augment_batch(images, AugmentConfig(border_p=0.5, blur_p=0.5), torch.Generator().manual_seed(0))
    again = augment_batch(images, AugmentConfig(border_p=0.5, blur_p=0.5), torch.Generator().manual_seed(0))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.allclose(first, images)


def test_hue_rotation_keeps_grey_and_brightness():
    from training.augment import hue_rotation

    grey = torch.full((4, 3, 8, 8), 0.4)
    assert torch.allclose(hue_rotation(grey, 0.5, torch.Generator().manual_seed(0)), grey, atol=1e-5)
    colour = torch.rand(4, 3, 8, 8) * 0.5 + 0.25  # away from the clamp
    rotated = hue_rotation(colour, 0.1, torch.Generator().manual_seed(0))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((rotated * luma).sum(1), (colour * luma).sum(1), atol=1e-4)
    assert not torch.allclose(rotated, colour)


def test_dihedral_only_permutes_pixels():
    images = torch.rand(32, 3, 8, 8)
    out = dihedral(images, torch.Generator().manual_seed(0))
    for before, after in zip(images, out):
        assert any(torch.equal(VIEWS[v](before[None])[0], after) for v in VIEWS)


def test_no_augmentation_config_changes_nothing():
    images = torch.rand(4, 3, 32, 32)
    off = AugmentConfig(dihedral=False, scale=0, shift=0, hed=0, brightness=0, contrast=0, saturation=0,
                        hue=0, blur_p=0, border_p=0)
    assert torch.equal(augment_batch(images, off, torch.Generator()), images)


# --- models and views ---------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", [name for name in BACKBONES if name not in FOUNDATION_MODELS])
def test_every_backbone_runs_forward_and_backward(backbone):
    # foundation models (up to 1.1 B parameters) are built on the meta device in test_lora.py
    network = create_classifier(**model_args(backbone))
    logits = network(torch.rand(2, 3, 128, 128))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


def test_views_are_the_named_flips():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(VIEWS["vflip"](x)[..., 0, :], x[..., 3, :])  # upside down: rows reversed
    assert torch.equal(VIEWS["hflip"](x)[..., :, 0], x[..., :, 3])
    assert len({tuple(VIEWS[v](x).flatten().tolist()) for v in VIEWS}) == 8  # eight distinct views


def test_ensemble_is_the_sigmoid_of_mean_member_view_scores():
    torch.manual_seed(0)
    networks = [create_classifier(**model_args("resnet10t_slim")).eval() for _ in range(2)]
    settings = [((0.5, 0.5, 0.5), (0.2, 0.2, 0.2), None), ((0.7, 0.5, 0.6), (0.2, 0.25, 0.2), 32)]
    ensemble = EnsembleClassifier(networks, [Preprocess(*s) for s in settings], ("identity", "vflip")).eval()
    patches = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        expected_scores = []
        for network, (mean, std, crop) in zip(networks, settings):
            pixels = patches.permute(0, 3, 1, 2).float() / 255
            images = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            if crop:
                images = images[:, :, 16:48, 16:48]  # the centre 32 of 64
            for view in (images, torch.flip(images, dims=[2])):
                logits = network(view)
                expected_scores.append(logits[:, 1] - logits[:, 0])
        expected = torch.sigmoid(torch.stack(expected_scores).mean(0))
        assert torch.allclose(ensemble(patches), expected, atol=1e-5)
        assert torch.allclose(view_scores(networks[1], Preprocess(*settings[1])(patches)),
                              torch.stack(expected_scores[2:]).mean(0), atol=1e-5)


def test_preprocess_treats_uint8_and_unit_float_batches_alike():
    preprocess = Preprocess((0.7, 0.5, 0.6), (0.2, 0.25, 0.2), crop=48)
    patches = torch.randint(0, 256, (2, 128, 128, 3), dtype=torch.uint8)
    from_uint8 = preprocess(patches)
    from_unit = preprocess.unit(patches.permute(0, 3, 1, 2).float() / 255)
    assert from_uint8.shape == (2, 3, 48, 48)
    assert torch.allclose(from_uint8, from_unit, atol=1e-5)
