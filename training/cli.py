"""Command line: `python -m training <command> --help` explains every option of each command.

Each command is an `*_entry(args)` function that turns parsed arguments into a call of the
library; the work itself lives in the modules (crossval, export, splits, sample_stack).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from training.models import BACKBONES
from training.synth.cli import add_synth_commands


def _config_with_overrides(args):
    from training.config import load_config

    config = load_config(args.config)
    if getattr(args, "data_kind", None):
        config.data = dataclasses.replace(config.data, kind=args.data_kind)
    if args.data_root:
        config.data = dataclasses.replace(config.data, root=args.data_root)
    if getattr(args, "weights", None):
        config.weights = args.weights
    if getattr(args, "backbone", None):
        config.backbone = args.backbone
    if getattr(args, "epochs", None):
        config.optim = dataclasses.replace(config.optim, epochs=args.epochs)
    if getattr(args, "device", None):
        config.optim = dataclasses.replace(config.optim, device=args.device)
    return config


def split_entry(args) -> int:
    from training.data import read_dataset
    from training.splits import save_split, split_for

    config = _config_with_overrides(args)
    samples = read_dataset(config.data.kind, config.data.root, slides=config.data.slides)
    overrides = {"n_folds": args.folds, "seed": args.seed, "stratify": args.stratify, "leave_out": args.leave_out}
    split = split_for(samples, dataclasses.replace(config.split, **{k: v for k, v in overrides.items() if v is not None}))
    save_split(split, args.out)
    sizes = ", ".join(f"{len(f['val_ids'])} patches/{len(f['val_slides'])} slides" for f in split["folds"])
    print(f"split: {len(samples)} patches, {split['n_folds']} folds ({sizes}) -> {args.out}")
    return 0


def train_entry(args) -> int:
    from training.crossval import run_crossval

    config = _config_with_overrides(args)
    run_dir = Path(args.out or Path("runs") / config.name)
    folds = None if args.fold == ["cv"] else [f if f == "all" else int(f) for f in args.fold]
    results = run_crossval(config, run_dir, folds=folds, split_path=args.split, show_progress=not args.quiet)
    if results is None:  # a torchrun process other than rank 0
        return 0
    oof = results["oof"]
    at = oof["at_threshold"]
    honest = oof["threshold_chosen_on_other_folds"]
    print(f"train: {run_dir}: out-of-fold ROC AUC {at['roc_auc']:.4f}, balanced accuracy {at['balanced_accuracy']:.4f} "
          f"at threshold {oof['threshold']:.3f}"
          + (f" ({honest['balanced_accuracy']:.4f} with each fold's threshold chosen on the other folds)" if honest else "")
          + f", n = {oof['n']} from {len(results['folds'])} folds; report: {run_dir / 'results.md'}")
    return 0


def report_entry(args) -> int:
    from training.config import load_config
    from training.crossval import pool_results
    from training.data import read_dataset

    config = load_config(str(args.run / "config.yaml"))
    samples = read_dataset(config.data.kind, args.data_root or config.data.root, slides=config.data.slides)
    pool_results(args.run, samples)
    print(f"report: {args.run / 'results.md'}")
    return 0


def _fold_folders(paths) -> list[Path]:
    from training.crossval import fold_dirs

    folders = []
    for path in map(Path, paths):
        found = [path] if (path / "model_args.json").is_file() else fold_dirs(path)
        if not found:
            raise FileNotFoundError(f"{path}: neither a fold folder nor a run folder with finished folds")
        folders += found
    return folders


def export_entry(args) -> int:
    from training.ensemble import DIHEDRAL_VIEWS
    from training.export import export_model

    views = DIHEDRAL_VIEWS if args.dihedral else args.views
    export_model(_fold_folders(args.runs), args.out, name=args.name, views=views, data_root=args.data_root,
                 fp16=args.fp16, confidence=args.confidence)
    return 0


def make_sample_entry(args) -> int:
    if args.points:
        from training.sample_roi import write_roi_case

        out = Path(args.out or "test/points/input")
        write_roi_case(out, seed=args.seed)
        print(f"make-sample: a whole image with candidate points -> {out}")
        return 0
    from training.sample_stack import write_sample_case

    out = Path(args.out or "test/input")
    write_sample_case(out, seed=args.seed, n_pages=args.pages)
    print(f"make-sample: {args.pages} pages -> {out}")
    return 0


def _add_config_arguments(parser) -> None:
    from training.config import CONFIG_DIR
    from training.data import READERS

    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("--config", default="cpu_small",
                        help=f"experiment config: a YAML path or one of {names} (default: cpu_small)")
    parser.add_argument("--data-kind", choices=list(READERS), help="dataset layout, overriding the config's data.kind")
    parser.add_argument("--data-root", help="dataset folder, overriding the config's data.root")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    split = commands.add_parser("split", help="compute and save a slide-grouped k-fold split")
    _add_config_arguments(split)
    split.add_argument("--out", type=Path, required=True, help="where to write the split JSON")
    split.add_argument("--folds", type=int, help="number of folds (default: the config's split.n_folds)")
    split.add_argument("--seed", type=int, help="split seed (default: the config's split.seed)")
    split.add_argument("--stratify", help="also balance this domain key across folds (e.g. tumor)")
    split.add_argument("--leave-out", help="leave-one-domain-out folds over this domain key (e.g. tumor) instead of k-fold")
    split.set_defaults(entry=split_entry)

    train = commands.add_parser("train", help="train cross-validation folds into a run folder",
                                description="Backbones: " + "; ".join(f"{k}: {v.note}" for k, v in BACKBONES.items()))
    _add_config_arguments(train)
    train.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    train.add_argument("--fold", nargs="+", default=["cv"],
                       help="folds to train: 'cv' (every fold, the default), fold numbers, "
                            "or 'all' (every sample, no validation)")
    train.add_argument("--split", type=Path, help="a split JSON to reuse (default: the run's split.json, made if absent)")
    train.add_argument("--backbone", choices=list(BACKBONES), help="override the config's backbone")
    train.add_argument("--weights", help="start from this local weight file or folder (offline pretrained weights)")
    train.add_argument("--epochs", type=int, help="override the config's optim.epochs")
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the config's optim.device, 'auto')")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(entry=train_entry)

    export = commands.add_parser("export", help="export run/fold folders as one ONNX ensemble + model.json")
    export.add_argument("runs", nargs="+", help="run folders (all their finished folds) or fold folders")
    export.add_argument("--out", type=Path, default=Path("model"), help="model folder to write (default: model)")
    export.add_argument("--name", default="model", help="model name; the graph is <out>/<name>.onnx")
    export.add_argument("--views", nargs="+", default=None,
                        help="test-time views (default: the training config's, identity + vflip as the seed paper)")
    export.add_argument("--dihedral", action="store_true", help="use all eight flips/rotations as test-time views")
    export.add_argument("--confidence", choices=["p_atypical", "predicted_class"], default="p_atypical",
                        help="what the stack output's confidence means: P(atypical) whatever the class (default), or "
                             "the probability of the class given (see README: What the container does)")
    export.add_argument("--fp16", action="store_true",
                        help="float16 weights and arithmetic, for GPUs (checked against PyTorch to 1e-2)")
    export.add_argument("--data-root", help="dataset folder for the parity check, overriding the config's")
    export.set_defaults(entry=export_entry)

    report = commands.add_parser("report", help="re-pool a run's out-of-fold predictions; rewrite results.md and plots")
    report.add_argument("run", type=Path, help="run folder (holds config.yaml and fold_*/)")
    report.add_argument("--data-root", help="dataset folder (for per-domain results), overriding the config's")
    report.set_defaults(entry=report_entry)

    sample = commands.add_parser("make-sample", help="render the project's synthetic sample cases (grand-challenge layout)")
    sample.add_argument("--points", action="store_true",
                        help="the whole-image case (image + candidate points) instead of a stack of crops")
    sample.add_argument("--out", help="case folder to write (default: test/input, or test/points/input with --points)")
    sample.add_argument("--seed", type=int, default=0, help="rendering seed (default: 0)")
    sample.add_argument("--pages", type=int, default=16, help="number of pages of the stack (default: 16)")
    sample.set_defaults(entry=make_sample_entry)
    add_synth_commands(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.entry(args)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
