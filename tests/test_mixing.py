"""Mixup and CutMix: what each does to a batch, and how a mixed batch is scored."""

import copy

import numpy as np
import pytest
import torch

from training.augment import mix_pairs
from training.config import config_from_dict
from training.train import Distributed, _Trainer


def test_mixup_blends_each_image_with_its_partner_and_repeats_under_the_same_seed():
    images = torch.rand(8, 3, 16, 16)
    mixed, partner, lam = mix_pairs(images, 0.4, 0.0, torch.Generator().manual_seed(1))
    assert 0 < lam < 1 and sorted(partner.tolist()) == list(range(8))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[partner])
    again, partner_again, lam_again = mix_pairs(images, 0.4, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(mixed, again) and torch.equal(partner, partner_again) and lam == lam_again


def test_cutmix_pastes_one_box_whose_area_is_the_partners_share():
    images = torch.rand(6, 3, 32, 32)
    for seed in range(20):
        mixed, partner, lam = mix_pairs(images, 0.0, 1.0, torch.Generator().manual_seed(seed))
        i = int(torch.nonzero(partner != torch.arange(6))[0])  # an image not paired with itself
        pasted = ~(mixed[i] == images[i]).all(dim=0)  # (H, W): pixels that are no longer its own
        assert torch.equal(mixed[i][:, pasted], images[partner[i]][:, pasted])
        if pasted.any():
            rows, cols = torch.nonzero(pasted, as_tuple=True)
            assert pasted.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
        assert 1 - lam == pytest.approx(float(pasted.float().mean()), abs=1e-6)


def test_both_alphas_use_each_method_on_some_batches():
    images = torch.rand(4, 3, 16, 16)
    kinds = set()
    for seed in range(30):
        mixed, partner, lam = mix_pairs(images, 0.4, 1.0, torch.Generator().manual_seed(seed))
        kinds.add("mixup" if torch.allclose(mixed, lam * images + (1 - lam) * images[partner]) else "cutmix")
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("labels_mode", ["majority", "soft"])
def test_a_mixed_batch_is_scored_as_lam_own_plus_the_rest_partner(labels_mode):
    config = config_from_dict({"backbone": "resnet10t_slim", "labels": labels_mode,
                               "optim": {"ema_decay": 0, "threads": 1}})
    labels = torch.tensor([0, 1, 0, 1, 0, 0])
    targets = torch.tensor([0.0, 1.0, 0.34, 0.67, 0.0, 0.0])
    trainer = _Trainer(config, labels.numpy(), steps_per_epoch=4, device=torch.device("cpu"), distributed=Distributed())
    before = copy.deepcopy(trainer.network)
    images = torch.rand(6, 3, 64, 64)
    partner, lam = torch.tensor([5, 4, 3, 2, 1, 0]), 0.7
    reported = trainer.train_step(images, labels, targets, None, (partner, lam))
    logits = before.train()(images)
    expected = lam * trainer.loss(logits, labels, targets) + (1 - lam) * trainer.loss(logits, labels[partner],
                                                                                        targets[partner])
    assert reported == pytest.approx(expected.item(), rel=1e-4)
    assert not np.isclose(reported, trainer.loss(logits, labels, targets).item(), rtol=1e-3)
