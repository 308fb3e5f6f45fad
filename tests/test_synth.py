"""The synthetic-figure generator at tiny sizes: networks, no-leakage rules, resume, sampling, quality,
and synthetic-balanced cross-validation fed by the sampler's manifests."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import training.synth.trainer as trainer_module
from tests.amibr_fixture import write_amibr
from training.config import DataConfig, config_from_dict
from training.data import read_amibr, read_manifest
from training.cli import build_parser
from training.cli import main as training_cli
from training.synth.cli import add_synth_commands
from training.synth.config import CONFIG_DIR as SYNTH_CONFIG_DIR
from training.synth.config import load_synth_config, synth_config_from_dict
from training.synth.diffusion import create_diffusion
from training.synth.networks import DIT_VARIANTS, create_dit, create_vae, dit_args
from training.synth.quality import frechet_distance, memorisation, nearest_distances
from training.synth.run import load_run, open_run
from training.synth.sample import balance_count, default_options, load_generator, to_patch_size, write_samples
from training.splits import make_split, save_split

TRAIN = {"steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 2,
         "ema_decay": 0.99}
LARGE_VARIANTS = {"DiT-B/2", "DiT-L/2"}


def tiny_synth_values(root) -> dict:
    """A generator config small enough for seconds on one core: 16x16x4 latents, one DiT block."""
    return {"name": "tiny", "data": {"kind": "amibr", "root": str(root)}, "views": ["identity", "vflip"],
            "vae": {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "crop": 32,
                    "train": {**TRAIN, "ema_decay": 0.0}},
            "dit": {"variant": "DiT-test/2"}, "diffusion": {"steps": 2},
            "pretrain": TRAIN, "finetune": TRAIN, "sample": {"batch_size": 8}, "quality": {"n_per_class": 6},
            "threads": 1}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny AMi-Br, a real-only classifier run on it (2 folds) and a generator for both folds."""
    from training.crossval import run_crossval

    base = tmp_path_factory.mktemp("synth")
    root = write_amibr(base / "amibr", n_slides=6, per_slide=8)
    classifier = config_from_dict({
        "name": "real", "backbone": "resnet10t_slim", "input_crop": 64, "data": {"kind": "amibr", "root": str(root)},
        "split": {"n_folds": 2}, "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 1,
                                           "tensorboard": False}})
    run_crossval(classifier, base / "real", show_progress=False)
    (base / "tiny.yaml").write_text(yaml.safe_dump(tiny_synth_values(root)))
    assert training_cli(["synth", "all", "--config", str(base / "tiny.yaml"), "--out", str(base / "gen"),
                         "--fold", "0", "1", "--split", str(base / "real" / "split.json"), "--quiet"]) == 0
    return {"base": base, "root": root, "classifier": base / "real", "generator": base / "gen"}


@pytest.mark.parametrize("variant", list(DIT_VARIANTS))
def test_every_dit_variant_predicts_latent_shaped_output_and_trains(variant):
    # The large variants (130 M and 460 M parameters) are built on the meta device: shapes and the
    # backward graph are checked without the seconds and gigabytes of real weights.
    device = torch.device("meta" if variant in LARGE_VARIANTS else "cpu")
    torch.manual_seed(0)
    with device:
        model = create_dit(**dit_args(variant, latent_channels=4, latent_size=8))
        latents, timesteps, labels = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([0, 1])
        output = model(latents, timesteps, labels)
        assert output.shape == (2, 4, 8, 8)
        assert device.type == "meta" or torch.isfinite(output).all()
        output.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        assert model.forward_with_cfg(latents, timesteps, labels, 3.0).shape == (2, 4, 8, 8)


def test_guidance_mixes_conditional_and_null_class_predictions_and_labels_drop_only_when_asked():
    torch.manual_seed(0)
    model = create_dit(**dit_args("DiT-test/2", 4, 8))
    for parameter in model.parameters():  # DiT's zero-initialised output would make every prediction 0
        torch.nn.init.normal_(parameter, std=0.2)
    latents, timesteps, labels = torch.randn(3, 4, 8, 8), torch.tensor([5, 50, 500]), torch.tensor([0, 1, 1])
    model.train()  # diffusers would drop labels at random here, block by block; ours must not
    conditional = model(latents, timesteps, labels)
    assert torch.equal(conditional, model(latents, timesteps, labels))
    unconditional = model(latents, timesteps, torch.full_like(labels, model.null_class))
    guided = model.forward_with_cfg(latents, timesteps, labels, 2.5)
    assert torch.allclose(guided, unconditional + 2.5 * (conditional - unconditional), atol=1e-5)
    assert torch.equal(model.forward_with_cfg(latents, timesteps, labels, 1.0), conditional)


def test_diffusion_loss_is_reproducible_from_its_generator_and_bad_settings_are_refused():
    model = create_dit(**dit_args("DiT-test/2", 4, 8))
    diffusion = create_diffusion(class_dropout=0.5)
    latents, labels = torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 0, 1])
    first = diffusion.training_loss(model, latents, labels, torch.Generator().manual_seed(3))
    assert torch.equal(first, diffusion.training_loss(model, latents, labels, torch.Generator().manual_seed(3)))
    for sampler in ("dpm", "ddim", "ddpm"):
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        out = diffusion.sample(model.eval(), noise, torch.tensor([1, 1]), steps=3, guidance=2.0, sampler=sampler,
                               generator=torch.Generator().manual_seed(0))
        assert out.shape == noise.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown sampler"):
        create_diffusion(sampler="euler_a")
    with pytest.raises(ValueError, match="prediction_type"):
        create_diffusion(prediction_type="sample")
    with pytest.raises(KeyError, match="unknown DiT variant"):
        dit_args("DiT-XXL/2", 4, 8)


def test_frechet_distance_is_zero_for_one_set_and_the_mean_shift_for_shifted_copies():
    features = np.random.default_rng(0).normal(size=(400, 6))
    assert abs(frechet_distance(features, features)) < 1e-6
    shift = np.array([1.0, -2.0, 0, 0, 0, 0])
    assert abs(frechet_distance(features, features + shift) - 5.0) < 1e-6


def test_all_writes_each_fold_its_own_generator_trained_without_its_validation_slides(workspace):
    run = load_run(workspace["generator"])
    split = json.loads((workspace["classifier"] / "split.json").read_text())
    for fold in (0, 1):
        fold_dir = run.fold_dir(fold)
        val_slides = set(split["folds"][fold]["val_slides"])
        for stage in ("vae", "pretrain", "finetune"):
            provenance = json.loads((fold_dir / stage / "provenance.json").read_text())
            assert provenance["fold"] == fold and provenance["finished"]
            assert provenance["excluded_validation_slides"] == len(val_slides)
            assert (fold_dir / stage / "summary.json").is_file() and not (fold_dir / stage / "resume.pt").exists()
        assert {s.slide for s in run.fold_data(fold).pretrain}.isdisjoint(val_slides)
        assert (fold_dir / "finetune" / "ema.safetensors").is_file()
        assert json.loads((fold_dir / "finetune" / "model_args.json").read_text())["variant"] == "DiT-test/2"
        assert len((fold_dir / "pretrain" / "metrics.csv").read_text().splitlines()) == 1 + 3
        rows = read_manifest(fold_dir / "manifest.csv")
        assert len(rows) == balance_count(run, fold, 1.0) > 0
        assert all(r.synthetic and r.label == 1 and r.slide == f"synthetic:tiny:fold{fold}" for r in rows)
        assert rows[0].domain == {"generator": f"tiny:fold{fold}", "guidance": "2.0", "steps": "2", "sampler": "dpm",
                                  "seed": "0"}
        with Image.open(rows[0].path) as image:
            assert image.size == (128, 128) and image.mode == "RGB"


def test_a_killed_dit_stage_resumes_to_the_same_weights(workspace, tmp_path, monkeypatch):
    run = load_run(workspace["generator"])
    fold_data = run.fold_data(0)
    for name in ("straight", "killed"):
        shutil.copytree(run.fold_dir(0) / "vae", tmp_path / name / "vae")
    device = torch.device("cpu")
    trainer_module.train_dit(run.config, tmp_path / "straight", fold_data, "pretrain", device, show_progress=False)

    real_update, calls = trainer_module._Optimisation.update, []

    def dies_at_the_fifth_step(self, loss):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_update(self, loss)

    monkeypatch.setattr(trainer_module._Optimisation, "update", dies_at_the_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train_dit(run.config, tmp_path / "killed", fold_data, "pretrain", device, show_progress=False)
    assert (tmp_path / "killed" / "pretrain" / "resume.pt").is_file()
    monkeypatch.setattr(trainer_module._Optimisation, "update", real_update)
    trainer_module.train_dit(run.config, tmp_path / "killed", fold_data, "pretrain", device, show_progress=False)
    for weights in ("model.safetensors", "ema.safetensors"):
        straight, resumed = (load_file(str(tmp_path / d / "pretrain" / weights)) for d in ("straight", "killed"))
        assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not torch.equal(*(load_file(str(tmp_path / "straight" / "pretrain" / w))["transformer.proj_out_2.weight"]
                             for w in ("model.safetensors", "ema.safetensors")))
    metrics = [(tmp_path / d / "pretrain" / "metrics.csv").read_text().splitlines() for d in ("straight", "killed")]
    assert [row.split(",")[:3] for row in metrics[0]] == [row.split(",")[:3] for row in metrics[1]]


def test_a_pretrained_vae_from_a_local_folder_is_used_instead_of_training_one(workspace, tmp_path):
    vae = create_vae(block_out_channels=[8, 8, 8, 8], layers_per_block=1, latent_channels=4, norm_num_groups=4,
                     image_size=128)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(str(tmp_path / "local-vae"))
    values = {**tiny_synth_values(workspace["root"]), "vae": {"pretrained": str(tmp_path / "local-vae")}}
    config = synth_config_from_dict(values)
    run = open_run(config, tmp_path / "gen", workspace["classifier"] / "split.json")
    device = torch.device("cpu")
    summary = trainer_module.train_vae(run.config, run.fold_dir(0), run.fold_data(0), device, show_progress=False)
    assert summary == {"source": "pretrained", "scaling_factor": 0.5}
    assert not (run.fold_dir(0) / "vae" / "config.json").exists()  # a pointer, not a copy
    codec = trainer_module.fold_vae(run.fold_dir(0), run.fold_data(0))
    assert codec.scale == 0.5 and codec.latent_shape(128) == (4, 16)
    trainer_module.train_dit(run.config, run.fold_dir(0), run.fold_data(0), "pretrain", device, show_progress=False)
    with pytest.raises(FileNotFoundError, match="no AutoencoderKL"):
        trainer_module.load_vae(tmp_path)


def test_sampling_is_seeded_image_by_image_and_resumes_missing_images(workspace, tmp_path):
    run = load_run(workspace["generator"])
    device = torch.device("cpu")
    options = default_options(run, batch_size=2)
    first = write_samples(run, 1, label=0, n=3, dest=tmp_path / "a", options=options, device=device, show_progress=False)
    second = write_samples(run, 1, label=0, n=3, dest=tmp_path / "b", options=dataclasses.replace(options, batch_size=3),
                           device=device, show_progress=False)
    pixels = [[np.asarray(Image.open(s.path)) for s in read_manifest(m)] for m in (first, second)]
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(*pixels))
    (tmp_path / "a" / "images" / "normal_000001.png").unlink()
    write_samples(run, 1, label=0, n=3, dest=tmp_path / "a", options=options, device=device, show_progress=False)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "images" / "normal_000001.png")), pixels[0][1])
    with pytest.raises(ValueError, match="other settings"):
        write_samples(run, 1, label=0, n=3, dest=tmp_path / "a", options=dataclasses.replace(options, guidance=4.0),
                      device=device, show_progress=False)


def test_quality_report_compares_with_held_out_patches_and_writes_a_synthetic_only_gallery(workspace, capsys):
    assert training_cli(["synth", "quality", str(workspace["generator"]), "--fold", "0",
                         "--classifier", str(workspace["classifier"]), "--quiet"]) == 0
    out_dir = workspace["generator"] / "fold_0" / "quality"
    report = json.loads((out_dir / "quality.json").read_text())
    n_val = len(json.loads((workspace["classifier"] / "split.json").read_text())["folds"][0]["val_ids"])
    atypical, normal = report["per_class"]["atypical"], report["per_class"]["normal"]
    assert atypical["n_real_validation"] + normal["n_real_validation"] == n_val
    assert atypical["n_synthetic"] == normal["n_synthetic"] == 6
    assert 0 <= atypical["two_sample_auroc"] <= 1 and atypical["frechet_distance"] >= 0
    assert 0 <= atypical["share_called_atypical_synthetic"] <= 1
    results = json.loads((workspace["classifier"] / "results.json").read_text())
    assert report["judge"]["threshold"] == results["oof"]["threshold"]
    # the balance set holds atypical only, drawn with the same settings: normal ones are drawn for the report
    assert (out_dir / "samples_normal_guidance2_steps2_dpm_seed0" / "manifest.csv").is_file()
    assert atypical["sampling"]["manifest"].endswith("fold_0/manifest.csv")
    for name in ("quality.md", "gallery.png", "gallery_synthetic.png"):
        assert (out_dir / name).stat().st_size > 0
    assert 0 <= report["class_effect_auroc"] <= 1 and 0 <= report["class_effect_auroc_real_validation"] <= 1
    assert 0 <= atypical["memorisation"]["share_closer_than_real_p05"] <= 1
    assert {c: report["vae_ceiling"][c]["n"] for c in ("normal", "atypical")} == {
        "normal": normal["n_real_validation"], "atypical": atypical["n_real_validation"]}
    assert "class effect AUROC" in capsys.readouterr().out

    # other sampling settings: both classes drawn anew with them, not the balance set's guidance-2 images
    assert training_cli(["synth", "quality", str(workspace["generator"]), "--fold", "0", "--guidance", "3",
                         "--classifier", str(workspace["classifier"]), "--quiet"]) == 0
    other = json.loads((out_dir / "quality.json").read_text())["per_class"]
    assert {other[c]["sampling"]["guidance"] for c in ("normal", "atypical")} == {"3.0"}
    assert (out_dir / "samples_atypical_guidance3_steps2_dpm_seed0" / "manifest.csv").is_file()
    assert training_cli(["synth", "quality", str(workspace["generator"]), "--fold", "0",
                         "--classifier", str(workspace["classifier"]), "--quiet"]) == 0

    out = workspace["base"] / "summary.json"
    assert training_cli(["synth", "summary", str(workspace["generator"]), "--fold", "0", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["config"] == "tiny" and summary["commands"][1].startswith("python -m training synth summary")
    assert summary["commands"][0].endswith(f"--classifier {workspace['classifier']}")  # the config's sampling
    row = summary["folds"][0]
    assert row["fold"] == 0 and row["class_effect_auroc"] == report["class_effect_auroc"]
    assert row["real_vs_synthetic_auroc"] == max(atypical["two_sample_auroc"], normal["two_sample_auroc"])
    assert (row["fid_atypical"], row["fid_reference_normal"]) == (
        atypical["frechet_distance"], normal["frechet_distance_real_reference"])
    assert row["vae_ceiling_real_vs_reconstruction_auroc"] == max(
        report["vae_ceiling"][c]["two_sample_auroc"] for c in ("normal", "atypical"))
    assert training_cli(["synth", "quality", str(workspace["generator"]), "--fold", "0", "--guidance", "3",
                         "--classifier", str(workspace["classifier"]), "--quiet"]) == 0  # drawn before: reused
    assert training_cli(["synth", "summary", str(workspace["generator"]), "--fold", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["commands"][0].endswith(f"--classifier {workspace['classifier']} --guidance 3")
    capsys.readouterr()
    assert training_cli(["synth", "summary", str(workspace["generator"]), "--fold", "1", "--out", str(out)]) != 0
    assert "run `python -m training synth quality" in capsys.readouterr().err


def test_memorisation_shows_a_generator_that_returns_its_training_set():
    rng = np.random.default_rng(0)
    training, validation = rng.normal(size=(300, 8)), rng.normal(size=(100, 8))
    copies = training[:100] + rng.normal(scale=1e-3, size=(100, 8))
    assert memorisation(copies, validation, training)["share_closer_than_real_p05"] == 1.0
    fresh = memorisation(rng.normal(size=(400, 8)), validation, training)
    assert fresh["share_closer_than_real_p05"] < 0.15
    assert abs(fresh["median_nearest_training_distance_synthetic"]
               - fresh["median_nearest_training_distance_real_validation"]) < 0.3
    assert nearest_distances(np.zeros((1, 2)), np.array([[3.0, 4.0], [6.0, 8.0]])).tolist() == [5.0]


def test_synthetic_balanced_crossval_trains_with_the_sampler_output_and_scores_real_patches_only(workspace):
    from training.crossval import run_crossval

    base = workspace["base"]
    config = config_from_dict({
        "name": "synth_balanced", "backbone": "resnet10t_slim", "input_crop": 64,
        "data": {"kind": "amibr", "root": str(workspace["root"])}, "split": {"n_folds": 2},
        "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 1, "tensorboard": False},
        "synthetic": {"dir": str(workspace["generator"]), "ratio": 1.0}})
    results = run_crossval(config, base / "balanced", split_path=workspace["classifier"] / "split.json",
                           show_progress=False)
    real_ids = {s.sample_id for s in read_amibr(workspace["root"])}
    for fold in (0, 1):
        summary = json.loads((base / "balanced" / f"fold_{fold}" / "summary.json").read_text())
        manifest = workspace["generator"] / f"fold_{fold}" / "manifest.csv"
        assert summary["n_train_synthetic"] == len(read_manifest(manifest)) > 0
        with (base / "balanced" / f"fold_{fold}" / "oof_predictions.csv").open() as handle:
            assert {row["sample_id"] for row in csv.DictReader(handle)} <= real_ids
    assert results["oof"]["n"] == len(real_ids)


def test_errors_name_the_problem(workspace, tmp_path, capsys):
    generator = str(workspace["generator"])
    assert training_cli(["synth", "sample", generator, "--fold", "7", "--balance", "--quiet"]) == 1
    assert "fold 7 is not in the split" in capsys.readouterr().err
    assert training_cli(["synth", "sample", generator, "--fold", "0", "--class", "mitotic", "--n", "2", "--quiet"]) == 1
    assert "unknown class 'mitotic'" in capsys.readouterr().err
    assert training_cli(["synth", "sample", str(tmp_path), "--fold", "0", "--balance"]) == 1
    assert "not a generator run folder" in capsys.readouterr().err
    open_run(synth_config_from_dict(tiny_synth_values(workspace["root"])), tmp_path / "fresh",
                     workspace["classifier"] / "split.json")
    assert training_cli(["synth", "sample", str(tmp_path / "fresh"), "--fold", "0", "--balance", "--quiet"]) == 1
    assert "no finished finetune stage" in capsys.readouterr().err
    other = synth_config_from_dict({**tiny_synth_values(workspace["root"]), "seed": 1})
    with pytest.raises(ValueError, match="holds another config"):
        open_run(other, tmp_path / "fresh")
    leaking = synth_config_from_dict(tiny_synth_values(workspace["root"]))
    leaking.extra_pretrain_data = [DataConfig(kind="amibr", root=str(workspace["root"]))]
    with pytest.raises(ValueError, match="validation slides"):
        open_run(leaking, tmp_path / "leaking", workspace["classifier"] / "split.json").fold_data(0)


def test_every_step_explains_its_options_and_hooks_into_the_training_cli(capsys):
    import argparse

    for step in ("train-vae", "pretrain", "finetune", "sample", "quality", "all"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["synth", step, "--help"])
        assert "--fold" in capsys.readouterr().out
    parser = argparse.ArgumentParser(prog="python -m training")
    add_synth_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["synth", "sample", "runs/synth/x", "--fold", "0", "--balance"])
    assert args.entry.__name__ == "sample_entry" and args.balance


def _class_test_generator(base, label_lr_scale: float):
    """A generator trained on two classes no one could confuse: a dark or a light disc in a 32 px patch."""
    root = write_amibr(base / "amibr", n_slides=4, per_slide=12, size=32)
    train = {"steps": 300, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "log_every": 50,
             "checkpoint_every": 1000, "ema_decay": 0.99}
    config = synth_config_from_dict({
        "name": "two-colours", "data": {"kind": "amibr", "root": str(root)}, "image_size": 32, "views": ["identity"],
        "vae": {"block_out_channels": [8, 16], "norm_num_groups": 4, "crop": 32, "train": {**train, "ema_decay": 0.0}},
        "dit": {"variant": "DiT-test/2", "label_lr_scale": label_lr_scale}, "diffusion": {"steps": 8},
        "pretrain": train, "finetune": train, "threads": 1})
    samples = read_amibr(root)
    save_split(make_split(samples, n_folds=2, seed=0), base / "split.json")
    run = open_run(config, base / "gen", base / "split.json")
    device = torch.device("cpu")
    trainer_module.train_vae(config, run.fold_dir(0), run.fold_data(0), device, show_progress=False)
    for stage in ("pretrain", "finetune"):
        trainer_module.train_dit(config, run.fold_dir(0), run.fold_data(0), stage, device, show_progress=False)
    return run


def test_the_class_label_changes_what_the_generator_draws(tmp_path):
    # Atypical patches of the fixture have a dark disc in the middle, normal ones a light one (mean
    # pixel ~47 vs ~143 in the central 8 x 8). Before fine-tuning started the class rows at the null
    # row and trained them faster, the same noise gave about the same image whatever the class
    # (gap 1.9 levels in this test; 31 with the fix).
    run = _class_test_generator(tmp_path, label_lr_scale=30.0)
    generator = load_generator(run, 0, torch.device("cpu"))
    seeds = list(range(16))
    options = default_options(run, guidance=2.0)
    atypical, normal = (generator.generate(label, seeds, options)[:, 12:20, 12:20].astype(float) for label in (1, 0))
    brightness_gap = normal.mean(axis=(1, 2, 3)) - atypical.mean(axis=(1, 2, 3))  # per noise seed
    assert brightness_gap.mean() > 15 and (brightness_gap > 0).mean() >= 0.9
    tables = generator.model.label_tables()
    assert tables and all(not torch.equal(t.weight[0], t.weight[1]) for t in tables)


def test_fine_tuning_starts_the_classes_at_the_null_class_and_trains_them_faster():
    model = create_dit(**dit_args("DiT-test/2", 4, 8))
    tables = model.label_tables()
    assert len(tables) == DIT_VARIANTS["DiT-test/2"]["depth"] and all(t.weight.shape[0] == 3 for t in tables)
    model.start_classes_from_null()
    assert all(torch.equal(t.weight[0], t.weight[2]) and torch.equal(t.weight[1], t.weight[2]) for t in tables)
    latents, steps = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():  # guidance has nothing to amplify yet: conditional = unconditional
        assert torch.allclose(model.forward_with_cfg(latents, steps, torch.tensor([0, 1]), 4.0),
                              model(latents, steps, torch.tensor([2, 2])), atol=1e-6)
    train = synth_config_from_dict({}).finetune
    optimisation = trainer_module._Optimisation(model, train, faster=[t.weight for t in tables], faster_scale=30.0)
    rest, labels = optimisation.optimizer.param_groups
    assert labels["params"] == [t.weight for t in tables] and labels["lr"] == pytest.approx(30 * rest["lr"])
    assert len(rest["params"]) + len(labels["params"]) == len(list(model.parameters()))


def test_a_generator_made_before_the_class_fix_is_refused(workspace, tmp_path):
    shutil.copytree(workspace["generator"], tmp_path / "gen")
    provenance = tmp_path / "gen" / "fold_0" / "finetune" / "provenance.json"
    record = json.loads(provenance.read_text())
    record.pop("generator_version")
    provenance.write_text(json.dumps(record))
    run = load_run(tmp_path / "gen")
    with pytest.raises(ValueError, match="generator version 1, this code is version 2"):
        load_generator(run, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="generator version 1"):  # even where every image is already drawn
        write_samples(run, 0, label=1, n=2, dest=run.fold_dir(0), options=default_options(run),
                      device=torch.device("cpu"), show_progress=False)
    from training.synth.quality import quality_report

    with pytest.raises(ValueError, match="generator version 1"):
        quality_report(run, 0, workspace["classifier"], options=default_options(run), device=torch.device("cpu"),
                       show_progress=False)


@pytest.mark.parametrize("name", sorted(path.stem for path in SYNTH_CONFIG_DIR.glob("*.yaml")))
def test_shipped_generator_configs_load_and_their_latents_fit_the_dit(name):
    config = load_synth_config(name)
    factor = 2 ** (len(config.vae.block_out_channels) - 1)  # AutoencoderKL halves the size in all but its last block
    assert config.image_size % factor == 0 and config.vae.crop <= config.image_size
    dit_args(config.dit.variant, config.vae.latent_channels, config.image_size // factor)


def test_balanced_fine_tuning_draws_each_class_about_equally_often():
    labels = torch.tensor([0] * 80 + [1] * 20).repeat(2)
    assert trainer_module._draw_weights(labels, balanced=False) is None
    weights = trainer_module._draw_weights(labels, balanced=True)
    drawn = labels[torch.multinomial(weights, 4000, replacement=True, generator=torch.Generator().manual_seed(0))]
    assert abs(drawn.float().mean().item() - 0.5) < 0.03  # uniform draws would give 0.2


def test_a_generated_centre_becomes_a_full_patch_with_its_edges_mirrored():
    centre = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    patch = to_patch_size(centre, 128)
    assert patch.shape == (128, 128, 3)
    assert np.array_equal(patch[32:96, 32:96], centre)
    assert np.array_equal(patch[31], patch[33]) and np.array_equal(patch[:, 96], patch[:, 94])  # mirrored, not black
    assert to_patch_size(patch, 128) is patch


def test_the_adaptive_adversarial_weight_balances_the_two_gradients():
    layer = torch.nn.Parameter(torch.randn(3, 3))
    loss = (layer ** 2).sum()
    assert trainer_module.adaptive_weight(loss, 2 * loss, layer).item() == pytest.approx(0.5, rel=1e-3)
    assert trainer_module.adaptive_weight(loss, 0 * loss, layer).item() == 1e4  # no adversarial gradient: clamped


def test_an_adversarial_vae_trains_its_discriminator_and_resumes_to_the_same_weights(workspace, tmp_path, monkeypatch):
    values = tiny_synth_values(workspace["root"])
    values["vae"] = {**values["vae"], "adversarial_weight": 0.5, "adversarial_start": 2, "discriminator_channels": 8}
    config = synth_config_from_dict(values)
    run = open_run(config, tmp_path / "gen", workspace["classifier"] / "split.json")
    device = torch.device("cpu")
    fold_data = run.fold_data(0)
    straight = trainer_module.train_vae(run.config, tmp_path / "straight", fold_data, device, show_progress=False)
    assert straight["discriminator_loss_last_50"] > 0 and straight["adversarial_weight_last_50"] > 0

    real_update, calls = trainer_module._Optimisation.update, []

    def dies_at_the_fifth_step(self, loss):  # after the resume point of step 4, with the discriminator at work
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_update(self, loss)

    monkeypatch.setattr(trainer_module._Optimisation, "update", dies_at_the_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train_vae(run.config, tmp_path / "killed", run.fold_data(0), device, show_progress=False)
    assert "discriminator" in torch.load(tmp_path / "killed" / "vae" / "resume.pt", weights_only=False)["companions"]
    monkeypatch.setattr(trainer_module._Optimisation, "update", real_update)
    trainer_module.train_vae(run.config, tmp_path / "killed", run.fold_data(0), device, show_progress=False)
    weights = [load_file(str(tmp_path / d / "vae" / "diffusion_pytorch_model.safetensors"))
               for d in ("straight", "killed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    plain = trainer_module.train_vae(synth_config_from_dict(tiny_synth_values(workspace["root"])), tmp_path / "plain",
                                     run.fold_data(0), device, show_progress=False)
    assert "discriminator_loss_last_50" not in plain
    other = load_file(str(tmp_path / "plain" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(other["decoder.conv_out.weight"], weights[0]["decoder.conv_out.weight"])


def test_the_vae_ceiling_compares_validation_patches_with_their_own_reconstructions(workspace, capsys):
    from training.synth.quality import reconstruct

    assert training_cli(["synth", "vae-quality", str(workspace["generator"]), "--fold", "1",
                         "--classifier", str(workspace["classifier"]), "--quiet"]) == 0
    report = json.loads((workspace["generator"] / "fold_1" / "quality" / "vae_ceiling.json").read_text())
    run = load_run(workspace["generator"])
    validation = run.fold_data(1).validation
    for label, name in enumerate(("normal", "atypical")):
        figures = report["vae_ceiling"][name]
        assert figures["n"] == sum(s.label == label for s in validation)
        assert 0 <= figures["two_sample_auroc"] <= 1 and figures["frechet_distance"] >= 0
        assert 0 <= figures["share_called_atypical_reconstruction"] <= 1
    assert "real-vs-reconstruction AUROC" in capsys.readouterr().out
    # the reconstructions are what the PSNR was measured on (up to rounding to uint8)
    from training.data import load_images

    real = load_images(validation[:4], run.config.image_size)
    decoded, psnr = reconstruct(run, 1, real, torch.device("cpu"))
    assert decoded.shape == real.shape and decoded.dtype == np.uint8
    error = ((decoded.astype(float) - real.astype(float)) ** 2).mean(axis=(1, 2, 3))
    assert np.allclose(10 * np.log10(255.0 ** 2 / error), psnr, atol=0.2)
