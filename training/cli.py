"""Command line: `python -m training <command> --help` explains every option of each command.

Each command is an `*_entry(args)` function that turns parsed arguments into a call of the
library; the work itself lives in the modules (crossval, export, splits, sample_stack).
"""

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from training.models import BACKBONES
from training.synth.cli import add_synth_commands
from training.thresholds import DEFAULT_RULE, RULES


# command-line option -> the config field it overrides (options a command lacks are skipped)
CONFIG_OVERRIDES = {"data_kind": "data.kind", "data_root": "data.root", "weights": "weights", "backbone": "backbone",
                    "epochs": "optim.epochs", "device": "optim.device"}


def _config_with_overrides(args):
    from training.config import load_config, with_overrides

    return with_overrides(load_config(args.config),
                          {field: getattr(args, option, None) for option, field in CONFIG_OVERRIDES.items()})


def split_entry(args) -> int:
    from training.data import config_samples
    from training.splits import save_split, split_for

    config = _config_with_overrides(args)
    samples = config_samples(config.data)
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
    from training.data import config_samples

    config = load_config(str(args.run / "config.yaml"))
    samples = config_samples(config.data, args.data_root)
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
    from training.export import ExportError, export_model

    views = DIHEDRAL_VIEWS if args.dihedral else args.views
    try:
        export_model(_fold_folders(args.runs), args.out, name=args.name, views=views, data_root=args.data_root,
                     fp16=args.fp16, half_weights=args.half_weights, calibration=not args.no_calibration,
                     threshold_rule=args.threshold_rule, out_of_domain=args.out_of_domain)
    except ExportError as error:  # a check failed: nothing was written
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def evaluate_entry(args) -> int:
    from training.evaluate import evaluate_cases, evaluate_patches

    if args.cases:
        if not args.ground_truth:
            raise ValueError("--cases needs --ground-truth (the official ground_truth.json)")
        document = evaluate_cases(args.model, args.cases, args.ground_truth, args.out)
    else:
        document = evaluate_patches(args.model, _evaluation_samples(args), args.out, domain_key=args.domain_key)
    aggregates, intervals = document["aggregates"], document["confidence_intervals_95"]
    print(f"evaluate: n = {document['n']} ({document['n_atypical']} atypical): balanced accuracy "
          f"{aggregates['overall_balanced_accuracy']:.4f} [{intervals['balanced_accuracy'][0]:.4f}, "
          f"{intervals['balanced_accuracy'][1]:.4f}], ROC AUC {aggregates['overall_roc_auc']:.4f} "
          f"[{intervals['roc_auc'][0]:.4f}, {intervals['roc_auc'][1]:.4f}] -> {args.out / 'metrics.json'}")
    return 0


def study_entry(args) -> int:
    from training.config import load_config, with_overrides
    from training.study import ENSEMBLE, run_study

    overrides = {"data.root": args.data_root, "optim.epochs": args.epochs, "optim.seed": args.seed}
    configs, rows = {}, []
    for row in args.configs:  # "a+b": an ensemble of configs a and b (names of configs given before, or configs)
        members = [configs[name] if name in configs else with_overrides(load_config(name), overrides)
                   for name in row.split(ENSEMBLE)]
        for config in members:
            if configs.setdefault(config.name, config) != config:
                raise ValueError(f"two different configs are named {config.name}")
        rows.append(ENSEMBLE.join(config.name for config in members))
    results = run_study(list(configs.values()), args.out, rows=rows, leave_out=args.leave_out, folds=args.folds,
                        prepare_synthetic=_synthetic_preparer(args), show_progress=not args.quiet)
    for name, difference in results["differences"].items():
        auc = difference["roc_auc"]
        print(f"study: {name} - {results['baseline']}: ROC AUC {auc['mean']:+.4f} per fold, 95% interval "
              f"[{auc['t_interval_95'][0]:+.4f}, {auc['t_interval_95'][1]:+.4f}]")
    print(f"study: report {args.out / 'study.md'}")
    return 0


def _synthetic_preparer(args):
    """For a study: train (or finish) one generator per fold of the study's split, then point the config at it."""

    def prepare(config, split, split_dir):
        from training.config import with_overrides
        from training.synth.config import load_synth_config
        from training.synth.pipeline import run_fold
        from training.synth.run import open_run
        from training.synth.sample import default_options
        from training.train import select_device, set_threads

        synth_config = load_synth_config(args.synth_config)
        synth_config = with_overrides(synth_config, {"data.kind": config.data.kind, "data.root": config.data.root})
        run = open_run(synth_config, split_dir / "synth" / synth_config.name, split_dir / "split.json")
        set_threads(synth_config.threads)
        device = select_device(synth_config.device)
        k_fold = not split_dir.name.startswith("lodo_")
        for fold in args.folds if (args.folds is not None and k_fold) else range(split["n_folds"]):
            if not (run.fold_dir(fold) / "manifest.csv").is_file():
                run_fold(run, fold, device, options=default_options(run), show_progress=not args.quiet)
        return dataclasses.replace(config, synthetic=dataclasses.replace(config.synthetic, dir=str(run.root)))

    return prepare


def threshold_transfer_entry(args) -> int:
    from training.threshold_transfer import run_threshold_transfer, shortfall_line

    results = run_threshold_transfer(_config_with_overrides(args), args.out, holdouts=args.holdouts,
                                     show_progress=not args.quiet)
    print(f"threshold-transfer: {shortfall_line(results)}; report: {args.out / 'transfer.md'}")
    return 0


def _evaluation_samples(args):
    from training.data import config_samples
    from training.splits import fold_indices, load_split

    config = _config_with_overrides(args)
    samples = config_samples(config.data)
    if args.fold is None:
        return samples
    if not args.split:
        raise ValueError("--fold needs --split (the split JSON whose validation part to evaluate)")
    from training.evaluate import check_members_held_out

    split = load_split(args.split)
    check_members_held_out(args.model, split, args.fold)
    _, val_index = fold_indices(split, samples, args.fold)
    return [samples[i] for i in val_index]


# The committed sample cases under test/ (folder -> stack layout, or None for the points case); test.sh runs
# the three stack cases against test/expected_output.json and the points case against its own.
SAMPLE_CASES = {
    "test/input": "platform",
    "test/mha/input": "platform-mha",
    "test/hand-named/input": "hand-named",
    "test/points/input": None,
}


def write_sample(out: Path, *, layout: str | None, seed: int, pages: int) -> str:
    """Write one sample case; return what it holds, for the log line."""
    from training.sample_roi import write_roi_case
    from training.sample_stack import write_sample_case

    if layout is None:
        write_roi_case(out, seed=seed)
        return "a whole image with candidate points"
    write_sample_case(out, seed=seed, n_pages=pages, layout=layout)
    return f"{pages} pages, {layout} layout"


def make_sample_entry(args) -> int:
    if args.all:
        cases = [(Path(folder), layout) for folder, layout in SAMPLE_CASES.items()]
    else:
        layout = None if args.points else args.layout
        default = next(folder for folder, case_layout in SAMPLE_CASES.items() if case_layout == layout)
        cases = [(Path(args.out or default), layout)]
    for out, layout in cases:
        if out.exists():
            shutil.rmtree(out)  # a UUID-named file of another seed must not stay beside the new one
        print(f"make-sample: {write_sample(out, layout=layout, seed=args.seed, pages=args.pages)} -> {out}")
    return 0


def _add_config_arguments(parser) -> None:
    from training.config import CONFIG_DIR
    from training.data import READERS

    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("--config", default="cpu_small",
                        help=f"experiment config: a YAML path or one of {names} (default: cpu_small)")
    parser.add_argument("--data-kind", choices=list(READERS), help="dataset layout, overriding the config's data.kind")
    parser.add_argument("--data-root", help="dataset folder, overriding the config's data.root")


def _add_split_command(commands) -> None:
    split = commands.add_parser("split", help="compute and save a slide-grouped k-fold split")
    _add_config_arguments(split)
    split.add_argument("--out", type=Path, required=True, help="where to write the split JSON")
    split.add_argument("--folds", type=int, help="number of folds (default: the config's split.n_folds)")
    split.add_argument("--seed", type=int, help="split seed (default: the config's split.seed)")
    split.add_argument("--stratify", help="also balance this domain key across folds (e.g. tumor)")
    split.add_argument("--leave-out", help="leave-one-domain-out folds over this domain key (e.g. tumor) instead of k-fold")
    split.set_defaults(entry=split_entry)


def _add_train_command(commands) -> None:
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


def _add_export_command(commands) -> None:
    export = commands.add_parser("export", help="export run/fold folders as one ONNX ensemble + model.json")
    export.add_argument("runs", nargs="+", help="run folders (all their finished folds) or fold folders")
    export.add_argument("--out", type=Path, default=Path("model"), help="model folder to write (default: model)")
    export.add_argument("--name", default="model", help="model name; the graph is <out>/<name>.onnx")
    export.add_argument("--views", nargs="+", default=None,
                        help="test-time views (default: the training config's, identity + vflip as the seed paper)")
    export.add_argument("--dihedral", action="store_true", help="use all eight flips/rotations as test-time views")
    export.add_argument("--no-calibration", action="store_true",
                        help="no calibration in the graph (default: a temperature and a bias fitted on the pooled "
                             "out-of-fold scores)")
    export.add_argument("--fp16", action="store_true",
                        help="float16 weights and arithmetic, for GPUs (checked against PyTorch to 1e-2)")
    export.add_argument("--half-weights", action="store_true",
                        help="weights stored as float16 (half the file), arithmetic in float32, for CPUs "
                             "(checked against PyTorch to 5e-3)")
    export.add_argument("--data-root", help="dataset folder for the parity check, overriding the config's")
    export.add_argument("--threshold-rule", choices=list(RULES), default=DEFAULT_RULE,
                        help=f"how the threshold is chosen from the out-of-fold predictions (default: {DEFAULT_RULE}; "
                             "see training/thresholds.py and `threshold-transfer`)")
    export.add_argument("--out-of-domain", type=Path, metavar="STUDY",
                        help="a study folder with leave-one-out runs of the members' configs (study --leave-out): "
                             "their results on each left-out source go into model.json as metrics.out_of_domain")
    export.set_defaults(entry=export_entry)


def _add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="evaluate an exported model (ONNX Runtime) as the Track 2 evaluator does, with 95%% intervals",
        description="Either a labelled patch set (--config/--data-kind/--data-root, optionally one fold's "
                    "validation part) or grand-challenge cases (--cases DIR --ground-truth FILE). Writes "
                    "metrics.json (the evaluator's keys), predictions or outputs, roc.png, reliability.png, "
                    "per_domain.png. Evaluate only on data the model did not train on.")
    evaluate.add_argument("--model", type=Path, default=Path("model"), help="model folder (default: model)")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for metrics.json and the plots")
    _add_config_arguments(evaluate)
    evaluate.add_argument("--split", type=Path, help="a split JSON, with --fold")
    evaluate.add_argument("--fold", type=int, help="evaluate only this fold's validation part of --split")
    evaluate.add_argument("--domain-key", help="report per value of this domain key (e.g. tumor, dataset)")
    evaluate.add_argument("--cases", type=Path, help="folder of stack images named in --ground-truth")
    evaluate.add_argument("--ground-truth", type=Path,
                          help='the official ground_truth.json: [{"image", "labels", "tumordomains"}]')
    evaluate.set_defaults(entry=evaluate_entry)


def _add_study_command(commands) -> None:
    study = commands.add_parser(
        "study", help="train several configs on one split and compare them fold by fold in one report",
        description="Runs every config (the first is the baseline) on one slide-grouped split, optionally also "
                    "leave-one-domain-out, and writes <out>/study.md with per-fold results, paired differences "
                    "with 95% intervals, per-domain and leave-one-out tables. Resumes where it stopped. Configs "
                    "with a synthetic section get per-fold generators trained first (--synth-config).")
    study.add_argument("--configs", nargs="+", required=True,
                       help="config names or YAML paths; the first is the baseline; a+b is the ensemble of "
                            "configs a and b (each trained as its own run, their scores averaged per patch; a "
                            "and b may name configs given before)")
    study.add_argument("--out", type=Path, required=True, help="study folder")
    study.add_argument("--data-root", help="dataset folder for every config, overriding data.root")
    study.add_argument("--leave-out", help="also run leave-one-domain-out folds over this domain key (e.g. dataset, tumor)")
    study.add_argument("--folds", nargs="+", type=int, help="train only these folds of the k-fold split (default: all)")
    study.add_argument("--epochs", type=int, help="override every config's optim.epochs (for quick looks)")
    study.add_argument("--seed", type=int,
                       help="override every config's optim.seed (initial weights, augmentation, batch order; the "
                            "split stays the config's): reruns into another --out measure run-to-run spread")
    study.add_argument("--synth-config", default="synth_cpu",
                       help="generator config for synthetic configs (default: synth_cpu)")
    study.add_argument("--quiet", action="store_true", help="no progress bars")
    study.set_defaults(entry=study_entry)


def _add_threshold_transfer_command(commands) -> None:
    transfer = commands.add_parser(
        "threshold-transfer", help="hold slides out, train and export without them, and test every threshold rule there",
        description="For each held-out group (a fold of the config's split), trains the config's cross-validation on "
                    "the other slides, exports it (config views and all eight), scores the held-out patches with "
                    "the exported graph, and compares each threshold rule with the best threshold on those patches. "
                    "Writes <out>/transfer.md, transfer.json, transfer.png. Resumes where it stopped.")
    _add_config_arguments(transfer)
    transfer.add_argument("--out", type=Path, required=True, help="output folder")
    transfer.add_argument("--holdouts", nargs="+", type=int, default=[0],
                          help="folds of the config's split to hold out, one after another (default: 0)")
    transfer.add_argument("--epochs", type=int, help="override the config's optim.epochs (for quick looks)")
    transfer.add_argument("--quiet", action="store_true", help="no progress bars")
    transfer.set_defaults(entry=threshold_transfer_entry)


def _add_report_command(commands) -> None:
    report = commands.add_parser("report", help="re-pool a run's out-of-fold predictions; rewrite results.md and plots")
    report.add_argument("run", type=Path, help="run folder (holds config.yaml and fold_*/)")
    report.add_argument("--data-root", help="dataset folder (for per-domain results), overriding the config's")
    report.set_defaults(entry=report_entry)


def _add_sample_command(commands) -> None:
    from training.sample_stack import LAYOUTS

    sample = commands.add_parser("make-sample", help="render the project's synthetic sample cases (grand-challenge layout)")
    sample.add_argument("--all", action="store_true", help=f"every committed case: {', '.join(SAMPLE_CASES)}")
    sample.add_argument("--points", action="store_true",
                        help="the whole-image case (image + candidate points) instead of a stack of crops")
    sample.add_argument("--layout", choices=list(LAYOUTS), default="platform",
                        help="platform: the stack under a UUID name as grand-challenge stores it (.tiff); platform-mha: "
                             "the same as a 3-D RGB .mha; hand-named: under its upload name (default: platform)")
    sample.add_argument("--out", help="case folder to write, replaced if it exists (default: the committed case's "
                                      "folder under test/)")
    sample.add_argument("--seed", type=int, default=0, help="rendering seed (default: 0)")
    sample.add_argument("--pages", type=int, default=16, help="number of pages of the stack (default: 16)")
    sample.set_defaults(entry=make_sample_entry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_split_command(commands)
    _add_train_command(commands)
    _add_export_command(commands)
    _add_evaluate_command(commands)
    _add_study_command(commands)
    _add_threshold_transfer_command(commands)
    _add_report_command(commands)
    _add_sample_command(commands)
    add_synth_commands(commands)
    return parser


def run_command(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse `argv` and run the chosen command; a problem the user can fix is one line and exit code 1."""
    args = parser.parse_args(argv)
    try:
        return args.entry(args)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    return run_command(build_parser(), argv)
