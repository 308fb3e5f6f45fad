"""How good are a fold's synthetic patches? Measured against real patches the generator never saw.

Real patches are fold k's validation part (held out from every stage of fold k's generator), and
the judge is fold k's real-only classifier (trained without them too). Figures, per class:
- Fréchet distance between real and synthetic feature sets (FID's formula, Heusel et al. 2017),
  on the classifier's penultimate-layer features (global-pooled `forward_features`) instead of
  Inception's, whose weights cannot be fetched here; a real-vs-real reference (fold k's training
  part against its validation part, same n as the synthetic set) gives the scale.
- A two-sample classifier (logistic regression on those features, cross-validated ROC AUC;
  Lopez-Paz & Oquab, ICLR 2017): 0.5 = indistinguishable; again with the real-vs-real reference.
- The share of synthetic patches the classifier calls atypical at the run's threshold (deployed
  test-time views), next to the same share for real validation patches of that class.
- Class effect: the judge's ROC AUC between synthetic atypical and synthetic normal patches
  (0.5: the class label changes nothing the judge sees), beside the same AUC on real validation
  patches (what the judge can tell at best).
- Memorisation: each synthetic patch's distance (judge features) to its nearest real training
  patch, against the same distance for real validation patches; `share_closer_than_real_p05` is
  the share of synthetic patches nearer to a training patch than 95 % of real validation ones
  (about 0.05 for a generator that does not copy, near 1 for one that returns its training set).
- The VAE's ceiling: validation patches against their own reconstructions (PSNR, two-sample
  AUROC, Fréchet distance, share called atypical): how real the latent space alone lets a figure
  look, so that a realism gap can be put on the VAE or on the DiT (also alone: `vae_quality_report`).
Written to `<run>/fold_<k>/quality/`: quality.json, quality.md, gallery.png (real and synthetic),
gallery_synthetic.png (synthetic only: the one that may be published without real data).
"""

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.special import expit

from inference.crops import fit_centred
from training.data import CLASSES, load_images, read_manifest
from training.splits import fold_fingerprint, load_split
from training.synth.data import read_provenance, to_model_range
from training.synth.run import GeneratorRun
from training.synth.sample import SampleOptions, write_samples
from training.synth.trainer import fold_vae


def load_judge(classifier: Path, fold: int, split: dict) -> dict:
    """Fold `fold` of a real-only classifier run: network, preprocessing, views and the run's threshold."""
    from training.ensemble import Preprocess
    from training.export import load_member

    classifier = Path(classifier)
    run_dir = classifier.parent if (classifier / "model_args.json").is_file() else classifier
    fold_dir = run_dir / f"fold_{fold}"
    for required in (fold_dir / "model_args.json", run_dir / "results.json", run_dir / "split.json"):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: missing; the judge is a finished classifier run "
                                    f"(`python -m training train`) with fold {fold} and pooled results")
    if fold_fingerprint(load_split(run_dir / "split.json"), fold) != fold_fingerprint(split, fold):
        raise ValueError(f"{run_dir}: its fold {fold} holds out other slides than the generator's; "
                         f"train the generator with --split {run_dir / 'split.json'}")
    network, args, config = load_member(fold_dir)
    threshold = json.loads((run_dir / "results.json").read_text())["oof"]["threshold"]
    return {"network": network, "preprocess": Preprocess.from_args(args), "views": list(config.tta_views),
            "threshold": float(threshold), "fold_dir": str(fold_dir), "backbone": args["backbone"]}


@torch.no_grad()
def judge_patches(judge: dict, patches: np.ndarray, device: torch.device, batch_size: int = 128):
    """(features (N, D), P(atypical) (N,)) of uint8 patches (N, H, W, 3) by the judge."""
    from training.train import predict_scores

    network = judge["network"].to(device).eval()
    preprocess = judge["preprocess"].to(device)
    tensor = torch.from_numpy(patches)
    features = []
    for start in range(0, len(tensor), batch_size):
        images = preprocess(tensor[start:start + batch_size].to(device))
        features.append(network.forward_head(network.forward_features(images), pre_logits=True).float().cpu())
    scores = predict_scores(network, preprocess, tensor, judge["views"], device)
    return torch.cat(features).numpy().astype(np.float64), expit(scores.astype(np.float64))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N, D)."""
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr((S_a S_b)^(1/2)) = tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), a symmetric PSD matrix: stable with eigh
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def two_sample_auroc(real: np.ndarray, synthetic: np.ndarray, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling synthetic from real features (0.5: cannot)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate([real, synthetic])
    is_synthetic = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    splits = min(5, len(real), len(synthetic))
    if splits < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    folds = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(model, features, is_synthetic, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(is_synthetic, probabilities))


def _drawn_with(rows: list, options: SampleOptions) -> bool:
    """Whether manifest rows were drawn with these sampling settings (seeds from options.seed on)."""
    return bool(rows) and all(
        (row.domain.get("guidance"), row.domain.get("steps"), row.domain.get("sampler"), row.domain.get("seed"))
        == (str(float(options.guidance)), str(options.steps), options.sampler, str(options.seed + i))
        for i, row in enumerate(rows))


def _synthetic_set(run: GeneratorRun, fold: int, label: int, n: int, options: SampleOptions, device, show_progress):
    """n synthetic patches of `label`: from the fold's balance manifest when it holds them drawn with `options`,
    else drawn anew into a folder named by the settings (both classes then start from the same seeds)."""
    fold_dir = run.fold_dir(fold)
    manifest = fold_dir / "manifest.csv"
    rows = [s for s in read_manifest(manifest) if s.label == label][:n] if manifest.is_file() else []
    if len(rows) < n or not _drawn_with(rows, options):
        folder = (f"samples_{CLASSES[label]}_guidance{float(options.guidance):g}_steps{options.steps}_"
                  f"{options.sampler}_seed{options.seed}")
        manifest = write_samples(run, fold, label=label, n=n, dest=fold_dir / "quality" / folder,
                                 options=options, device=device, show_progress=show_progress)
        rows = read_manifest(manifest)
    settings = {key: rows[0].domain.get(key) for key in ("guidance", "steps", "sampler")}
    return load_images(rows[:n]), {**settings, "manifest": str(manifest)}


@torch.no_grad()
def reconstruct(run: GeneratorRun, fold: int, patches: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 reconstructions, PSNR in dB per patch) of patches (N, H, W, 3) through the fold's VAE."""
    codec = fold_vae(run.fold_dir(fold), run.fold_data(fold)).to(device).eval()
    images, psnrs = [], []
    for start in range(0, len(patches), 32):
        batch = to_model_range(torch.from_numpy(patches[start:start + 32])).to(device)
        decoded = codec.decode(codec.encode(batch)[0]).float()
        error = ((decoded - batch) * 127.5).pow(2).mean(dim=(1, 2, 3))
        psnrs.append((10 * torch.log10(255.0 ** 2 / error.clamp(min=1e-10))).cpu())
        images.append(((decoded + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
    if not images:
        return np.zeros((0, *patches.shape[1:]), np.uint8), np.zeros(0)
    return torch.cat(images).numpy(), torch.cat(psnrs).numpy().astype(np.float64)


def vae_ceiling(run: GeneratorRun, fold: int, judge: dict, device, seed: int = 0) -> dict:
    """What the latent space alone costs, per class: fold k's validation patches against their own
    reconstructions by the fold's VAE, on the judge's features (two-sample AUROC, Fréchet distance)
    and calls (share called atypical, beside the real patches' share), with the PSNR.

    A generator cannot draw more realistically than its VAE decodes, so these bound every
    synthetic figure of the quality report from below; what is left is the DiT's share.
    """
    fold_data = run.fold_data(fold)
    per_class = {}
    for label, name in enumerate(CLASSES):
        real = load_images([s for s in fold_data.validation if s.label == label], run.config.image_size)
        decoded, psnr = reconstruct(run, fold, real, device)
        real_features, real_p = judge_patches(judge, real, device)
        decoded_features, decoded_p = judge_patches(judge, decoded, device)
        per_class[name] = {
            "n": len(real), "psnr_db": float(psnr.mean()),
            "two_sample_auroc": two_sample_auroc(real_features, decoded_features, seed),
            "frechet_distance": frechet_distance(real_features, decoded_features),
            "share_called_atypical_reconstruction": float((decoded_p >= judge["threshold"]).mean()),
            "share_called_atypical_real_validation": float((real_p >= judge["threshold"]).mean()),
        }
    return per_class


def nearest_distances(queries: np.ndarray, pool: np.ndarray, batch: int = 512) -> np.ndarray:
    """Euclidean distance from each row of `queries` (N, D) to its nearest row of `pool` (M, D)."""
    pool_norms = (pool ** 2).sum(axis=1)
    nearest = []
    for start in range(0, len(queries), batch):
        chunk = queries[start:start + batch]
        squared = (chunk ** 2).sum(axis=1)[:, None] - 2 * chunk @ pool.T + pool_norms[None, :]
        nearest.append(np.sqrt(np.clip(squared.min(axis=1), 0, None)))
    return np.concatenate(nearest) if nearest else np.zeros(0)


def memorisation(synthetic: np.ndarray, real_validation: np.ndarray, training: np.ndarray) -> dict:
    """Nearest-training-patch distances (features) of synthetic and of real validation patches."""
    synthetic_nearest = nearest_distances(synthetic, training)
    real_nearest = nearest_distances(real_validation, training)
    p05 = float(np.percentile(real_nearest, 5))
    return {"median_nearest_training_distance_synthetic": float(np.median(synthetic_nearest)),
            "median_nearest_training_distance_real_validation": float(np.median(real_nearest)),
            "real_validation_p05": p05, "share_closer_than_real_p05": float((synthetic_nearest < p05).mean())}


def _roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    from training.metrics import roc_auc

    return roc_auc(np.r_[np.ones(len(positives)), np.zeros(len(negatives))], np.r_[positives, negatives])


def _class_figures(judge, real_val, train_samples, synthetic, device, seed, training_features) -> dict:
    """The per-class figures of the module docstring; the reference draws len(synthetic) training patches.

    Also returns the judge's P(atypical) of the synthetic and real patches (keys starting "_"), for
    the class effect, which compares the two classes.
    """
    val_features, val_p = judge_patches(judge, real_val, device)
    synthetic_features, synthetic_p = judge_patches(judge, synthetic, device)
    chosen = np.random.default_rng(seed).permutation(len(train_samples))[:len(synthetic)]
    reference = load_images([train_samples[i] for i in sorted(chosen)])
    reference_features, _ = judge_patches(judge, reference, device)
    threshold = judge["threshold"]
    return {
        "_synthetic_p": synthetic_p, "_real_p": val_p,
        "memorisation": memorisation(synthetic_features, val_features, training_features),
        "n_real_validation": len(real_val), "n_synthetic": len(synthetic), "n_real_reference": len(reference),
        "frechet_distance": frechet_distance(val_features, synthetic_features),
        "frechet_distance_real_reference": frechet_distance(val_features, reference_features),
        "two_sample_auroc": two_sample_auroc(val_features, synthetic_features, seed),
        "two_sample_auroc_real_reference": two_sample_auroc(val_features, reference_features, seed),
        "share_called_atypical_synthetic": float((synthetic_p >= threshold).mean()),
        "share_called_atypical_real_validation": float((val_p >= threshold).mean()),
    }


def quality_report(run: GeneratorRun, fold, classifier: Path, *, n_per_class: int | None = None,
                   options: SampleOptions, device: torch.device, show_progress: bool = True) -> dict:
    """Measure fold `fold`'s generator against its held-out real patches; write `<fold>/quality/`."""
    fold_data = run.fold_data(fold)
    fold = fold_data.fold
    read_provenance(run.fold_dir(fold) / "finetune", fold_data, "finetune")  # this fold's, by this code's version
    n = n_per_class or run.config.quality.n_per_class
    judge = load_judge(classifier, fold, run.split)
    out_dir = run.fold_dir(fold) / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)
    training_features, _ = judge_patches(judge, load_images(fold_data.finetune, progress=show_progress), device)
    per_class, gallery = {}, []
    for label, name in enumerate(CLASSES):
        real_val = load_images([s for s in fold_data.validation if s.label == label], progress=show_progress)
        train_samples = [s for s in fold_data.finetune if s.label == label]
        synthetic, settings = _synthetic_set(run, fold, label, n, options, device, show_progress)
        per_class[name] = {**_class_figures(judge, real_val, train_samples, synthetic, device, run.config.seed,
                                            training_features), "sampling": settings}
        # both synthetic rows start column i from the noise of seed i: what differs is the class; both
        # shown at the size the generator draws (its centre crop of a patch)
        size = run.config.image_size
        gallery += [(f"real {name}\n(validation)", fit_centred(real_val, height=size, width=size)),
                    (f"synthetic {name}\n(column = seed)", fit_centred(synthetic, height=size, width=size))]
    scores = {name: (figures.pop("_synthetic_p"), figures.pop("_real_p")) for name, figures in per_class.items()}
    report = {
        "fold": fold, "generator": f"{run.config.name}:fold{fold}", "split_fingerprint": fold_data.fingerprint,
        "judge": {k: judge[k] for k in ("fold_dir", "backbone", "threshold", "views")},
        "features": "judge's penultimate layer (forward_head(pre_logits=True)), identity view",
        "vae_psnr_validation_db": float(reconstruct(run, fold, load_images(fold_data.validation[:256],
                                                                            run.config.image_size), device)[1].mean()),
        "vae_ceiling": vae_ceiling(run, fold, judge, device, run.config.seed),
        "class_effect_auroc": _roc_auc(scores["atypical"][0], scores["normal"][0]),
        "class_effect_auroc_real_validation": _roc_auc(scores["atypical"][1], scores["normal"][1]),
        "per_class": per_class,
    }
    (out_dir / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "quality.md").write_text(quality_markdown(report))
    columns = run.config.quality.gallery_columns
    write_gallery(gallery, out_dir / "gallery.png", columns)
    write_gallery([row for row in gallery if row[0].startswith("synthetic")], out_dir / "gallery_synthetic.png",
                  columns, rows_per_set=2)
    return report


def quality_markdown(report: dict) -> str:
    """quality.json as a short Markdown table."""
    lines = [f"# Generator quality, fold {report['fold']} ({report['generator']})", "",
             f"Judge: {report['judge']['fold_dir']} ({report['judge']['backbone']}), threshold "
             f"{report['judge']['threshold']:.4f}, views {', '.join(report['judge']['views'])}. "
             f"Real patches: fold {report['fold']}'s validation part (never seen by this generator).", "",
             f"VAE reconstruction PSNR on validation patches: {report['vae_psnr_validation_db']:.2f} dB", "",
             f"Class effect (judge's ROC AUC, synthetic atypical vs synthetic normal): "
             f"{report['class_effect_auroc']:.3f}; the same on real validation patches: "
             f"{report['class_effect_auroc_real_validation']:.3f} (0.5: the class changes nothing).", "",
             "| class | n real / synthetic | Fréchet distance (real-vs-real reference) | two-sample AUROC "
             "(reference) | called atypical: synthetic / real |", "|---|---|---|---|---|"]
    for name, figures in report["per_class"].items():
        lines.append(
            f"| {name} | {figures['n_real_validation']} / {figures['n_synthetic']} | "
            f"{figures['frechet_distance']:.2f} ({figures['frechet_distance_real_reference']:.2f}) | "
            f"{figures['two_sample_auroc']:.3f} ({figures['two_sample_auroc_real_reference']:.3f}) | "
            f"{figures['share_called_atypical_synthetic']:.3f} / {figures['share_called_atypical_real_validation']:.3f} |")
    lines += ceiling_markdown(report["vae_ceiling"])
    lines += ["", "| class | median nearest-training distance: synthetic / real validation | synthetic nearer than "
              "95 % of real validation |", "|---|---|---|"]
    for name, figures in report["per_class"].items():
        copies = figures["memorisation"]
        lines.append(f"| {name} | {copies['median_nearest_training_distance_synthetic']:.2f} / "
                     f"{copies['median_nearest_training_distance_real_validation']:.2f} | "
                     f"{copies['share_closer_than_real_p05']:.3f} (0.05 expected without copying) |")
    settings = next(iter(report["per_class"].values()))["sampling"]
    lines += ["", f"Sampling: guidance {settings['guidance']}, {settings['steps']} steps, {settings['sampler']}. "
              "Reference: fold's training patches (same n as synthetic) against the same validation patches.", ""]
    return "\n".join(lines)


def ceiling_markdown(ceiling: dict) -> list:
    """The VAE ceiling (vae_ceiling) as Markdown lines."""
    lines = ["", "VAE ceiling: validation patches against their own reconstructions (what the latent space alone "
             "costs; no synthetic figure can do better).", "",
             "| class | n | PSNR | two-sample AUROC | Fréchet distance | called atypical: reconstructed / real |",
             "|---|---|---|---|---|---|"]
    for name, figures in ceiling.items():
        lines.append(f"| {name} | {figures['n']} | {figures['psnr_db']:.2f} dB | {figures['two_sample_auroc']:.3f} | "
                     f"{figures['frechet_distance']:.2f} | {figures['share_called_atypical_reconstruction']:.3f} / "
                     f"{figures['share_called_atypical_real_validation']:.3f} |")
    return lines


def vae_quality_report(run: GeneratorRun, fold, classifier: Path, device: torch.device) -> dict:
    """The VAE ceiling of fold `fold` alone (needs only its VAE stage): `<fold>/quality/vae_ceiling.json` and `.md`.

    Lets two latent spaces be compared before any DiT is trained on them.
    """
    fold_data = run.fold_data(fold)
    fold = fold_data.fold
    judge = load_judge(classifier, fold, run.split)
    report = {"fold": fold, "generator": f"{run.config.name}:fold{fold}", "split_fingerprint": fold_data.fingerprint,
              "judge": {k: judge[k] for k in ("fold_dir", "backbone", "threshold", "views")},
              "vae_ceiling": vae_ceiling(run, fold, judge, device, run.config.seed)}
    out_dir = run.fold_dir(fold) / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vae_ceiling.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# VAE ceiling, fold {fold} ({report['generator']})", "",
             f"Judge: {judge['fold_dir']}, threshold {judge['threshold']:.4f}."]
    lines += ceiling_markdown(report["vae_ceiling"])
    (out_dir / "vae_ceiling.md").write_text("\n".join(lines) + "\n")
    return report


def write_gallery(sets: list, path: Path, columns: int = 8, rows_per_set: int = 1) -> None:
    """A grid PNG: `rows_per_set` rows of `columns` patches per (title, uint8 (N, H, W, 3)) set."""
    n_rows = len(sets) * rows_per_set
    gap = 4  # white pixels between patches
    figure = Figure(figsize=(columns * 1.1 + 1.4, n_rows * 1.15))
    axes = figure.subplots(n_rows, 1, squeeze=False)
    for index, (title, patches) in enumerate(sets):
        height, width = patches.shape[1:3]
        for row in range(rows_per_set):
            strip = np.full((height, columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
            for column, patch in enumerate(patches[row * columns:(row + 1) * columns]):
                strip[:, column * (width + gap):column * (width + gap) + width] = patch
            axis = axes[index * rows_per_set + row, 0]
            axis.imshow(strip)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_ylabel(title if row == 0 else "", rotation=0, ha="right", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


MAKE_COMMAND = ("python -m training synth all --config {config} --out {run} --fold {folds} "
                "--split {classifier}/split.json --classifier {classifier}{sampling}")
SUMMARY_COMMAND = "python -m training synth summary {run} --fold {folds} --out {out}"


def sampling_flags(run: GeneratorRun, rows: list) -> str:
    """` --guidance G` etc. for the sampling settings the folds' reports used where they are not the config's.

    The folds must agree: one summary describes one way of drawing (a ValueError otherwise).
    """
    defaults = {"guidance": float(run.config.diffusion.guidance), "steps": int(run.config.diffusion.steps),
                "sampler": run.config.diffusion.sampler}
    flags = ""
    for key, default in defaults.items():
        values = {type(default)(row["sampling"][key]) for row in rows}  # the manifests hold them as text
        if len(values) > 1:
            raise ValueError(f"the folds' quality reports were drawn with different {key} settings ({sorted(values)}); "
                             f"run `synth quality` again with one setting for all of them")
        value = values.pop()
        if value != default:
            flags += f" --{key} {value:g}" if isinstance(value, float) else f" --{key} {value}"
    return flags


def quality_summary(run: GeneratorRun, folds: list, out: Path) -> dict:
    """The machine-readable summary of the folds' quality reports (docs/synthesis_quality.json).

    `real_vs_synthetic_auroc` is the larger (worse) of the two classes' two-sample ROC AUCs.
    """
    rows, classifiers = [], set()
    for fold in folds:
        path = run.fold_dir(fold) / "quality" / "quality.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `python -m training synth quality {run.root} --fold {fold} "
                                    f"--classifier <real-only run>` first")
        report = json.loads(path.read_text())
        classifiers.add(str(Path(report["judge"]["fold_dir"]).parent))
        normal, atypical = report["per_class"]["normal"], report["per_class"]["atypical"]
        rows.append({
            "fold": report["fold"], "class_effect_auroc": report["class_effect_auroc"],
            "class_effect_auroc_real_validation": report["class_effect_auroc_real_validation"],
            "judge_atypical_share_synthetic_atypical": atypical["share_called_atypical_synthetic"],
            "judge_atypical_share_synthetic_normal": normal["share_called_atypical_synthetic"],
            "judge_atypical_share_real_atypical": atypical["share_called_atypical_real_validation"],
            "judge_atypical_share_real_normal": normal["share_called_atypical_real_validation"],
            "real_vs_synthetic_auroc": max(normal["two_sample_auroc"], atypical["two_sample_auroc"]),
            "real_vs_synthetic_auroc_normal": normal["two_sample_auroc"],
            "real_vs_synthetic_auroc_atypical": atypical["two_sample_auroc"],
            "fid_normal": normal["frechet_distance"], "fid_atypical": atypical["frechet_distance"],
            "fid_reference_normal": normal["frechet_distance_real_reference"],
            "fid_reference_atypical": atypical["frechet_distance_real_reference"],
            "synthetic_nearer_than_real_p05_atypical": atypical["memorisation"]["share_closer_than_real_p05"],
            "vae_psnr_validation_db": report["vae_psnr_validation_db"],
            "vae_ceiling_real_vs_reconstruction_auroc": max(
                figures["two_sample_auroc"] for figures in report["vae_ceiling"].values()),
            "n_synthetic_per_class": atypical["n_synthetic"], "sampling": atypical["sampling"]})
    folds_text = " ".join(map(str, folds))
    classifier = classifiers.pop() if len(classifiers) == 1 else "<real-only run>"  # one judge run for all folds
    summary = {"config": run.config.name,
               "commands": [MAKE_COMMAND.format(config=run.config.name, run=run.root, folds=folds_text,
                                                classifier=classifier, sampling=sampling_flags(run, rows)),
                            SUMMARY_COMMAND.format(run=run.root, folds=folds_text, out=out)],
               "folds": rows}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
