"""Command line of the generator, the `synth` command of `python -m training`: `python -m training synth <step> --help`.

Steps, per fold: `train-vae`, `pretrain`, `finetune` (training, resumable), `sample` (a class, or the
balance set that synthetic-balanced training reads), `quality` (figures against held-out real
patches), `vae-quality` (the VAE's ceiling alone), `summary` (the folds' quality as one JSON), and
`all` (every step for a list of folds, skipping what is finished). Each step is an `*_entry(args)`
function that parses its arguments into a call of the library.
"""

from pathlib import Path

from training.synth.networks import DIT_VARIANTS

DESCRIPTION = ("Synthetic atypical mitotic figures: per fold, a class-conditional latent diffusion transformer "
               "(diffusers AutoencoderKL + DiTTransformer2DModel), pre-trained on every patch outside the fold's "
               "validation slides, fine-tuned on the fold's training part; see docs/synthesis.md.")


def _device(config, override):
    from training.train import select_device, set_threads

    set_threads(config.threads)
    return select_device(override or config.device)


def _open(args):
    """The run folder for a training step, opened with the config and its command-line overrides."""
    from training.config import with_overrides
    from training.synth.config import load_synth_config
    from training.synth.run import open_run

    config = with_overrides(load_synth_config(args.config),
                            {"data.kind": args.data_kind, "data.root": args.data_root, "vae.pretrained": args.vae})
    run = open_run(config, args.out or Path("runs") / "synth" / config.name, args.split)
    return run, _device(run.config, args.device)


def _folds(run, folds) -> list:
    from training.synth.data import check_fold

    return [check_fold(run.split, fold) for fold in folds]


def train_vae_entry(args) -> int:
    from training.synth.trainer import train_vae

    run, device = _open(args)
    for fold in _folds(run, args.fold):
        summary = train_vae(run.config, run.fold_dir(fold), run.fold_data(fold), device, show_progress=not args.quiet)
        print(f"train-vae: fold {fold}: {run.fold_dir(fold) / 'vae'} "
              f"(latent scaling factor {summary['scaling_factor']:.4f})")
    return 0


def _dit_entry(args, stage: str) -> int:
    from training.synth.trainer import train_dit

    run, device = _open(args)
    for fold in _folds(run, args.fold):
        summary = train_dit(run.config, run.fold_dir(fold), run.fold_data(fold), stage, device,
                            show_progress=not args.quiet)
        print(f"{stage}: fold {fold}: {summary['steps']} steps on {summary['n_images']} patches, final loss "
              f"{summary['final_loss']:.4f}, {summary['train_seconds']:.0f} s -> {run.fold_dir(fold) / stage}")
    return 0


def pretrain_entry(args) -> int:
    return _dit_entry(args, "pretrain")


def finetune_entry(args) -> int:
    return _dit_entry(args, "finetune")


def _options(run, args):
    from training.synth.sample import default_options

    return default_options(run, guidance=args.guidance, steps=args.steps, sampler=args.sampler, seed=args.seed,
                           batch_size=args.batch_size)


def sample_entry(args) -> int:
    from training.synth.run import load_run
    from training.synth.sample import class_index, sample_balance, write_samples

    run = load_run(args.run)
    device = _device(run.config, args.device)
    options = _options(run, args)
    if args.balance == (args.n is not None):
        raise ValueError("give either --balance, or --class and --n")
    label = class_index(args.class_name)
    for fold in _folds(run, args.fold):
        if args.balance:
            manifest = sample_balance(run, fold, ratio=args.ratio, options=options, device=device,
                                      show_progress=not args.quiet)
        else:
            dest = Path(args.dest) / f"fold_{fold}" if args.dest else run.fold_dir(fold) / "samples" / args.class_name
            manifest = write_samples(run, fold, label=label, n=args.n, dest=dest, options=options, device=device,
                                     show_progress=not args.quiet)
        print(f"sample: fold {fold}: {manifest}")
    return 0


def quality_entry(args) -> int:
    from training.synth.quality import quality_report
    from training.synth.run import load_run

    run = load_run(args.run)
    device = _device(run.config, args.device)
    for fold in _folds(run, args.fold):
        report = quality_report(run, fold, args.classifier, n_per_class=args.n, options=_options(run, args),
                                device=device, show_progress=not args.quiet)
        atypical = report["per_class"]["atypical"]
        print(f"quality: fold {fold}: atypical Fréchet distance {atypical['frechet_distance']:.2f} "
              f"(real reference {atypical['frechet_distance_real_reference']:.2f}), two-sample AUROC "
              f"{atypical['two_sample_auroc']:.3f}, called atypical {atypical['share_called_atypical_synthetic']:.3f} "
              f"(real {atypical['share_called_atypical_real_validation']:.3f}), class effect AUROC "
              f"{report['class_effect_auroc']:.3f} -> {run.fold_dir(fold) / 'quality'}")
    return 0


def vae_quality_entry(args) -> int:
    from training.synth.quality import vae_quality_report
    from training.synth.run import load_run

    run = load_run(args.run)
    device = _device(run.config, args.device)
    for fold in _folds(run, args.fold):
        ceiling = vae_quality_report(run, fold, args.classifier, device)["vae_ceiling"]
        print(f"vae-quality: fold {fold}: " + "; ".join(
            f"{name} PSNR {figures['psnr_db']:.2f} dB, real-vs-reconstruction AUROC {figures['two_sample_auroc']:.3f}, "
            f"called atypical {figures['share_called_atypical_reconstruction']:.3f} "
            f"(real {figures['share_called_atypical_real_validation']:.3f})" for name, figures in ceiling.items())
            + f" -> {run.fold_dir(fold) / 'quality' / 'vae_ceiling.md'}")
    return 0


def summary_entry(args) -> int:
    from training.synth.quality import quality_summary
    from training.synth.run import load_run

    run = load_run(args.run)
    summary = quality_summary(run, _folds(run, args.fold), args.out)
    for row in summary["folds"]:
        print(f"summary: fold {row['fold']}: class effect {row['class_effect_auroc']:.3f}, judge calls atypical "
              f"{row['judge_atypical_share_synthetic_atypical']:.3f} of synthetic atypical and "
              f"{row['judge_atypical_share_synthetic_normal']:.3f} of synthetic normal, real-vs-synthetic AUROC "
              f"{row['real_vs_synthetic_auroc']:.3f}")
    print(f"summary: {args.out}")
    return 0


def all_entry(args) -> int:
    from training.synth.pipeline import run_fold

    run, device = _open(args)
    for fold in _folds(run, args.fold):
        result = run_fold(run, fold, device, options=_options(run, args), classifier=args.classifier,
                          show_progress=not args.quiet)
        print(f"all: fold {fold}: balance set {result['manifest']}"
              + (f", quality {run.fold_dir(fold) / 'quality' / 'quality.md'}" if "quality" in result else ""))
    return 0


def _add_training_arguments(parser, *, many_folds: bool = True) -> None:
    from training.data import READERS
    from training.synth.config import CONFIG_DIR

    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("--config", default="synth_cpu",
                        help=f"generator config: a YAML path or one of {names} (default: synth_cpu)")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/synth/<config name>)")
    parser.add_argument("--fold", nargs="+", required=True,
                        help="fold number(s) of the split; each gets its own generator, which never sees that "
                             "fold's validation slides")
    parser.add_argument("--split", type=Path,
                        help="the classifier run's split JSON (e.g. runs/cpu_small/split.json); needed on the first "
                             "call unless the config names one; later calls reuse the run folder's copy")
    parser.add_argument("--data-kind", choices=list(READERS), help="dataset layout, overriding the config's data.kind")
    parser.add_argument("--data-root", help="dataset folder, overriding the config's data.root")
    parser.add_argument("--vae", help="a local pretrained AutoencoderKL folder (save_pretrained layout, e.g. an SD VAE) "
                                      "instead of training one per fold; it must not have seen the evaluation data")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the config's device, 'auto')")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_sampling_arguments(parser) -> None:
    from training.synth.diffusion import SAMPLERS

    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale, 1 = none "
                                                       "(default: the config's diffusion.guidance)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the config's diffusion.steps)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), help="sampler (default: the config's diffusion.sampler)")
    parser.add_argument("--seed", type=int,
                        help="image i starts from the noise of seed + i (default: the config's sample.seed)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the config's sample.batch_size)")


def _add_run_arguments(parser) -> None:
    parser.add_argument("run", type=Path, help="generator run folder (holds config.yaml, split.json, fold_<k>/)")
    parser.add_argument("--fold", nargs="+", required=True, help="fold number(s) whose generator to use")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run config's device, 'auto')")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_synth_steps(steps) -> None:
    """Add the generator's steps to an argparse subparsers object."""
    variants = ", ".join(DIT_VARIANTS)
    vae = steps.add_parser("train-vae", help="train fold k's VAE on its pre-training patches (or point to --vae)",
                           description="Train one AutoencoderKL per fold on every patch outside the fold's validation "
                                       "slides (plus the config's extra_pretrain_data), or record the pretrained "
                                       "--vae folder. Resumes an interrupted run.")
    _add_training_arguments(vae)
    vae.set_defaults(entry=train_vae_entry)

    pretrain = steps.add_parser("pretrain", help="pre-train fold k's DiT, class-agnostic, on its pre-training patches",
                                description=f"Stage 1: every label is the null class. DiT variants: {variants}. "
                                            f"Needs the fold's VAE. Resumes an interrupted run.")
    _add_training_arguments(pretrain)
    pretrain.set_defaults(entry=pretrain_entry)

    finetune = steps.add_parser("finetune", help="fine-tune fold k's DiT class-conditionally on its training part",
                                description="Stage 2: starts from the pre-trained EMA weights, every class embedding at "
                                            "the null one; labels normal/atypical, 10% dropped to the null class for "
                                            "guidance; the class embeddings learn dit.label_lr_scale times faster. "
                                            "Resumes an interrupted run.")
    _add_training_arguments(finetune)
    finetune.set_defaults(entry=finetune_entry)

    sample = steps.add_parser("sample", help="draw synthetic patches of a class, or fold k's balance set",
                              description="Writes PNGs and a manifest.csv (image,label,slide,synthetic,...) that "
                                          "training's manifest reader takes. --balance writes <run>/fold_<k>/manifest.csv, "
                                          "where an experiment with synthetic.dir: <run> looks.")
    _add_run_arguments(sample)
    sample.add_argument("--balance", action="store_true",
                        help="draw ratio x (n_normal - n_atypical) of the fold's training part, all atypical")
    sample.add_argument("--ratio", type=float, help="with --balance: the ratio (default: the config's sample.ratio)")
    sample.add_argument("--class", dest="class_name", default="atypical",
                        help="class to draw without --balance: normal or atypical (default: atypical)")
    sample.add_argument("--n", type=int, help="number of images to draw without --balance")
    sample.add_argument("--dest", help="without --balance: folder to write into, one fold_<k>/ per fold "
                                       "(default: <run>/fold_<k>/samples/<class>)")
    _add_sampling_arguments(sample)
    sample.set_defaults(entry=sample_entry)

    quality = steps.add_parser("quality", help="measure fold k's synthetic patches against its held-out real ones",
                               description="Fréchet distance and two-sample AUROC on a real-only classifier's features, "
                                           "the share it calls atypical, a gallery; into <run>/fold_<k>/quality/.")
    _add_run_arguments(quality)
    quality.add_argument("--classifier", type=Path, required=True,
                         help="the real-only classifier run folder (e.g. runs/cpu_small): its fold_<k> is the judge, "
                              "its results.json gives the threshold; it must use the generator's split")
    quality.add_argument("--n", type=int, help="synthetic patches per class (default: the config's quality.n_per_class)")
    _add_sampling_arguments(quality)
    quality.set_defaults(entry=quality_entry)

    ceiling = steps.add_parser("vae-quality", help="how real fold k's VAE lets a patch look (needs only the VAE stage)",
                               description="Validation patches against their own reconstructions by the fold's VAE, on "
                                           "the judge's features: two-sample AUROC, Fréchet distance, PSNR and the "
                                           "share called atypical; into <run>/fold_<k>/quality/vae_ceiling.json. "
                                           "`quality` reports the same beside the synthetic figures.")
    _add_run_arguments(ceiling)
    ceiling.add_argument("--classifier", type=Path, required=True,
                         help="the real-only classifier run folder whose fold_<k> is the judge (same split)")
    ceiling.set_defaults(entry=vae_quality_entry)

    summary = steps.add_parser("summary", help="the folds' quality reports as one JSON (docs/synthesis_quality.json)",
                               description="Reads <run>/fold_<k>/quality/quality.json of each fold (made by `quality`) "
                                           "and writes one object per fold with the class effect, the judge's shares, "
                                           "two-sample AUROC and Fréchet distances, plus the command that made it.")
    summary.add_argument("run", type=Path, help="generator run folder")
    summary.add_argument("--fold", nargs="+", required=True, help="fold numbers to include")
    summary.add_argument("--out", type=Path, default=Path("docs/synthesis_quality.json"),
                         help="where to write (default: docs/synthesis_quality.json)")
    summary.set_defaults(entry=summary_entry)

    every = steps.add_parser("all", help="every step for the listed folds, skipping what is finished",
                             description="train-vae, pretrain, finetune, sample --balance and (with --classifier) "
                                         "quality, fold after fold; run it again to resume after an interruption.")
    _add_training_arguments(every)
    every.add_argument("--classifier", type=Path,
                       help="real-only classifier run for the quality report (skipped without it)")
    _add_sampling_arguments(every)
    every.set_defaults(entry=all_entry)


def add_synth_commands(subparsers) -> None:
    """Add `synth` and its steps to a command line's subparsers (training/cli.py's)."""
    synth = subparsers.add_parser("synth", help="synthetic atypical figures: a per-fold class-conditional latent DiT",
                                  description=DESCRIPTION)
    add_synth_steps(synth.add_subparsers(dest="synth_step", required=True, metavar="STEP"))
