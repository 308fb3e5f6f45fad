"""Per-patch Reinhard stain normalisation: what it promises, the same in training and in the graph."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kornia.color import lab_to_rgb, rgb_to_lab

from tests.amibr_fixture import make_patch, train_and_export
from training.ensemble import EnsembleClassifier, Preprocess
from training.export import load_member
from training.stain import (LabPatches, ReinhardNorm, fit_reinhard_target, lab_to_srgb, linear_to_lab, srgb_to_linear,
                            stain_args, stain_module)

ROOT = Path(__file__).resolve().parents[1]
# Ruifrok & Johnston's H&E vectors: optical density per unit of haematoxylin and eosin in R, G, B
HAEMATOXYLIN, EOSIN = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])


def stained(rng, haematoxylin_strength=1.0, eosin_strength=1.0, size=48) -> np.ndarray:
    """A uint8 (size, size, 3) H&E-like patch: blotchy stain amounts through the Beer-Lambert model."""
    h = rng.uniform(0.1, 0.9, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    e = rng.uniform(0.1, 0.6, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    density = haematoxylin_strength * h[..., None] * HAEMATOXYLIN + eosin_strength * e[..., None] * EOSIN
    return np.clip(255 * np.exp(-density), 0, 255).astype(np.uint8)


def as_unit(patches: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 255.0


def lab_statistics(images: torch.Tensor):
    lab = rgb_to_lab(images)
    return lab.mean(dim=(2, 3)), lab.std(dim=(2, 3))


def every_byte_colour(step=3) -> torch.Tensor:
    """uint8 (1, n, n, 3) patch of RGB colours on a grid over [0, 255]^3, both ends included."""
    levels = torch.tensor(sorted(set(range(0, 256, step)) | {255}), dtype=torch.uint8)
    grid = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij"), dim=-1).reshape(-1, 3)
    side = int(np.ceil(np.sqrt(len(grid))))
    return torch.cat([grid, grid[:side * side - len(grid)]]).reshape(1, side, side, 3)


def test_the_colour_maps_are_kornias():
    colours = every_byte_colour()
    unit = colours.permute(0, 3, 1, 2).float() / 255.0
    reference = rgb_to_lab(unit)
    assert torch.allclose(LabPatches.of_bytes(colours).lab, reference, atol=2e-4)  # L in [0, 100]
    assert torch.allclose(linear_to_lab(srgb_to_linear(unit)), reference, atol=2e-4)
    assert torch.allclose(lab_to_srgb(reference), lab_to_rgb(reference, clip=True), atol=1e-5)
    # back from anywhere in the Lab box: most of it is out of the sRGB gamut (clipped), some has
    # f(Z) < 0 (kornia clamps it); normalised patches land there
    box = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    lab = box * torch.tensor([100.0, 255.0, 255.0]).view(1, 3, 1, 1) - torch.tensor([0, 128.0, 128.0]).view(1, 3, 1, 1)
    assert ((lab[:, 0] + 16) / 116 - lab[:, 2] / 200 < 0).float().mean() > 0.1
    assert torch.allclose(lab_to_srgb(lab), lab_to_rgb(lab, clip=True), atol=1e-5)


def test_each_patch_gets_the_target_statistics():
    rng = np.random.default_rng(0)
    patches = np.stack([stained(rng, s, 2 - s) for s in (0.6, 1.0, 1.4)])
    target_mean, target_std = [70.0, 15.0, -8.0], [12.0, 6.0, 5.0]
    out = ReinhardNorm(target_mean, target_std)(LabPatches.of_unit(as_unit(patches)))
    mean, std = lab_statistics(out)
    assert mean.numpy() == pytest.approx(np.tile(target_mean, (3, 1)), abs=1.0)
    assert std.numpy() == pytest.approx(np.tile(target_std, (3, 1)), abs=1.0)


def test_the_same_tissue_under_two_stainings_comes_out_alike():
    tissue = [np.random.default_rng(seed) for seed in (1, 1)]  # two draws of the same amounts
    pale, dark = stained(tissue[0], 0.6, 0.7), stained(tissue[1], 1.5, 1.3)
    normaliser = ReinhardNorm(**{k: v for k, v in fit_reinhard_target(
        torch.from_numpy(np.stack([pale, dark])), [0, 1]).items() if k != "method"})
    before = (as_unit(pale[None]) - as_unit(dark[None])).abs().mean()
    after = (normaliser(LabPatches.of_unit(as_unit(pale[None])))
             - normaliser(LabPatches.of_unit(as_unit(dark[None])))).abs().mean()
    assert after < before / 3, (float(before), float(after))


def test_the_target_is_fitted_on_the_training_patches_only():
    rng = np.random.default_rng(2)
    patches = torch.from_numpy(np.stack([stained(rng, 0.5, 0.5)] * 4 + [stained(rng, 1.6, 1.6)] * 4))
    pale, dark = fit_reinhard_target(patches, range(4)), fit_reinhard_target(patches, range(4, 8))
    assert pale["target_mean"][0] > dark["target_mean"][0] + 10  # lighter on L
    assert stain_args("none", patches, range(4)) == {}
    assert stain_args("reinhard", patches, range(4))["stain"] == pale
    with pytest.raises(ValueError, match="stain_norm must be one of"):
        stain_args("macenko", patches, range(4))
    with pytest.raises(ValueError, match="no patches"):
        fit_reinhard_target(patches, [])


def test_a_damaged_target_is_refused():
    with pytest.raises(ValueError, match="unknown stain normalisation"):
        stain_module({"method": "vahadane"})
    with pytest.raises(ValueError, match="3 positive stds"):
        stain_module({"method": "reinhard", "target_mean": [60, 10, -5], "target_std": [10, 0, 5]})
    assert stain_module(None) is None


def test_uint8_and_training_paths_agree_with_the_stain_before_the_crop():
    rng = np.random.default_rng(3)
    patches = np.stack([stained(rng, 1.0, 1.0, size=64) for _ in range(3)])
    preprocess = Preprocess([0.5] * 3, [0.25] * 3, crop=32, stain=ReinhardNorm([65, 12, -6], [10, 5, 4]))
    from_uint8 = preprocess(torch.from_numpy(patches))
    from_unit = preprocess.unit(as_unit(patches))
    assert from_uint8.shape == (3, 3, 32, 32)
    assert torch.allclose(from_uint8, from_unit, atol=1e-5)
    # statistics of the whole patch, not the crop: cropping first gives other pixels
    cropped_first = Preprocess([0.5] * 3, [0.25] * 3, stain=ReinhardNorm([65, 12, -6], [10, 5, 4])).unit(
        as_unit(patches[:, 16:48, 16:48]))
    assert not torch.allclose(from_unit, cropped_first, atol=1e-3)


def test_cropping_in_lab_and_a_shared_lab_change_nothing():
    rng = np.random.default_rng(6)
    images = as_unit(np.stack([stained(rng, 0.8 + 0.2 * i, 1.0, size=64) for i in range(3)]))
    normaliser = ReinhardNorm([65, 12, -6], [10, 5, 4])
    crop = lambda x: x[:, :, 16:48, 16:48]  # noqa: E731
    lab = LabPatches.of_unit(images)
    assert torch.allclose(normaliser(lab, crop), crop(normaliser(lab)), atol=1e-5)


def test_the_ensemble_shares_one_lab_conversion_without_changing_a_member():
    from training.ensemble import view_scores
    from training.models import create_classifier, model_args

    torch.manual_seed(0)
    networks = [create_classifier(**model_args("resnet10t_slim")).eval() for _ in range(2)]
    preprocessors = [Preprocess([0.5] * 3, [0.25] * 3, crop=64, stain=ReinhardNorm([60 + 5 * k, 12, -6], [10, 5, 4]))
                     for k in range(2)]
    patches = torch.from_numpy(np.stack([stained(np.random.default_rng(k), 1.0, 1.0, size=128) for k in range(3)]))
    with torch.no_grad():
        shared = EnsembleClassifier(networks, preprocessors)(patches)
        alone = torch.sigmoid(torch.stack([view_scores(n, p.unit(as_unit(patches.numpy())), ("identity", "vflip"))
                                           for n, p in zip(networks, preprocessors)]).mean(dim=0))
    assert torch.allclose(shared, alone, atol=1e-5)


@pytest.fixture(scope="module")
def stain_run(tmp_path_factory):
    """(run folder, model folder) of a 2-fold, 1-epoch run with stain_norm: reinhard."""
    return train_and_export(tmp_path_factory.mktemp("stain"), "tiny_reinhard", stain_norm="reinhard")


def test_each_fold_records_its_own_target(stain_run):
    run_dir, _ = stain_run
    targets = [json.loads((run_dir / f"fold_{k}" / "model_args.json").read_text())["stain"] for k in (0, 1)]
    assert all(t["method"] == "reinhard" and len(t["target_mean"]) == 3 for t in targets)
    assert targets[0] != targets[1]  # fitted on different training slides
    members = json.loads((stain_run[1] / "model.json").read_text())["members"]
    assert [m["stain"] for m in members] == targets


def test_the_graph_normalises_as_training_did(stain_run, make_case, tmp_path):
    run_dir, model_dir = stain_run
    spec = json.loads((model_dir / "model.json").read_text())
    assert spec["metrics"]["export_parity_max_abs_difference"] < 1e-4
    rng = np.random.default_rng(4)
    pages = np.stack([make_patch(rng, atypical=i % 2 == 0) for i in range(4)])
    completed = subprocess.run(
        [sys.executable, str(ROOT / "process.py"), "--input", str(make_case(pages)), "--output", str(tmp_path / "out"),
         "--model", str(model_dir)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = json.loads((tmp_path / "out" / "multiple-mitotic-figure-classification.json").read_text())
    members = [load_member(run_dir / f"fold_{k}") for k in (0, 1)]
    assert all(isinstance(Preprocess.from_args(m[1]).stain, ReinhardNorm) for m in members)
    calibration = spec["calibration"]
    ensemble = EnsembleClassifier([m[0] for m in members], [Preprocess.from_args(m[1]) for m in members],
                                  temperature=calibration["temperature"], bias=calibration["bias"]).eval()
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(pages)).numpy()
    assert [r["confidence"] for r in result] == pytest.approx(expected.tolist(), abs=1e-4)
