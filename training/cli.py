"""Command line: `python -m training <command> --help` explains every option of each command.

Each command is an `*_entry(args)` function that turns parsed arguments into a call of the
library; the work itself lives in the modules (crossval, export, splits, sample_stack).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from training.models import BACKBONES


def _config_with_overrides(args):
    from training.config import load_config

    config = load_config(args.config)
    if args.data_root:
        config.data = dataclasses.replace(config.data, root=args.data_root)
    if getattr(args, "backbone", None):
        config.backbone = args.backbone
    if getattr(args, "epochs", None):
        config.optim = dataclasses.replace(config.optim, epochs=args.epochs)
    return config


def split_entry(args) -> int:
    from training.data import read_dataset
    from training.splits import make_split, save_split

    config = _config_with_overrides(args)
    samples = read_dataset(config.data.kind, config.data.root)
    split = make_split(samples, n_folds=args.folds or config.split.n_folds, seed=config.split.seed if args.seed is None else args.seed)
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
    oof = results["oof"]
    at = oof["at_threshold"]
    honest = oof["threshold_chosen_on_other_folds"]
    print(f"train: {run_dir}: out-of-fold ROC AUC {at['roc_auc']:.4f}, balanced accuracy {at['balanced_accuracy']:.4f} "
          f"at threshold {oof['threshold']:.3f}"
          + (f" ({honest['balanced_accuracy']:.4f} with each fold's threshold chosen on the other folds)" if honest else "")
          + f", n = {oof['n']} from {len(results['folds'])} folds")
    return 0


def _fold_folders(paths) -> list[Path]:
    from training.crossval import fold_dirs

    folders = []
    for path in map(Path, paths):
        found = [path] if (path / "model_args.json").is_file() else fold_dirs(path)
        if not found:
            raise FileNotFoundError(f"{path}: neither a fold folder nor a run folder with finished folds")
        folders += [f for f in found if f.name != "fold_all"]
    return folders


def export_entry(args) -> int:
    from training.ensemble import DIHEDRAL_VIEWS
    from training.export import export_model

    views = DIHEDRAL_VIEWS if args.dihedral else args.views
    export_model(_fold_folders(args.runs), args.out, name=args.name, views=views, data_root=args.data_root)
    return 0


def make_sample_entry(args) -> int:
    from training.sample_stack import write_sample_case

    write_sample_case(Path(args.out), seed=args.seed, n_pages=args.pages)
    print(f"make-sample: {args.pages} pages -> {args.out}")
    return 0


def _add_config_arguments(parser) -> None:
    parser.add_argument("--config", default="cpu_small",
                        help="experiment config: a YAML path or a name from training/configs/ (default: cpu_small)")
    parser.add_argument("--data-root", help="dataset folder, overriding the config's data.root")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    split = commands.add_parser("split", help="compute and save a slide-grouped k-fold split")
    _add_config_arguments(split)
    split.add_argument("--out", type=Path, required=True, help="where to write the split JSON")
    split.add_argument("--folds", type=int, help="number of folds (default: the config's split.n_folds)")
    split.add_argument("--seed", type=int, help="split seed (default: the config's split.seed)")
    split.set_defaults(entry=split_entry)

    train = commands.add_parser("train", help="train cross-validation folds into a run folder",
                                description="Backbones: " + "; ".join(f"{k}: {v.note}" for k, v in BACKBONES.items()))
    _add_config_arguments(train)
    train.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    train.add_argument("--fold", nargs="+", default=["cv"],
                       help="folds to train: 'cv' (every fold, the default), fold numbers, or 'all' (every sample, no validation)")
    train.add_argument("--split", type=Path, help="a split JSON to reuse (default: the run's split.json, made if absent)")
    train.add_argument("--backbone", choices=list(BACKBONES), help="override the config's backbone")
    train.add_argument("--epochs", type=int, help="override the config's optim.epochs")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(entry=train_entry)

    export = commands.add_parser("export", help="export run/fold folders as one ONNX ensemble + model.json")
    export.add_argument("runs", nargs="+", help="run folders (all their finished folds) or fold folders")
    export.add_argument("--out", type=Path, default=Path("model"), help="model folder to write (default: model)")
    export.add_argument("--name", default="model", help="model name; the graph is <out>/<name>.onnx")
    export.add_argument("--views", nargs="+", default=None,
                        help="test-time views (default: the training config's, identity + vflip as the seed paper)")
    export.add_argument("--dihedral", action="store_true", help="use all eight flips/rotations as test-time views")
    export.add_argument("--data-root", help="dataset folder for the parity check, overriding the config's")
    export.set_defaults(entry=export_entry)

    sample = commands.add_parser("make-sample", help="render the project's synthetic sample case (grand-challenge layout)")
    sample.add_argument("--out", default="test/input", help="case folder to write (default: test/input)")
    sample.add_argument("--seed", type=int, default=0, help="rendering seed (default: 0)")
    sample.add_argument("--pages", type=int, default=16, help="number of pages (default: 16)")
    sample.set_defaults(entry=make_sample_entry)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.entry(args)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
