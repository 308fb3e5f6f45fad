"""Export fold folders (any folds, any backbones) as one ONNX graph plus model.json.

Export is its own step with its checks built in (timm's `onnx_export`/`onnx_validate`): the graph
must pass `onnx.checker`, and ONNX Runtime must agree with PyTorch on real patches to within
1e-4 in probability, or nothing is written. The threshold is the one that maximises balanced
accuracy on the members' pooled out-of-fold predictions (or another rule of training.thresholds).
The format is docs/model-format.md.
"""

import json
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
import onnxruntime
import torch
import yaml
from safetensors.torch import load_file

from inference.errors import InputError
from inference.model import load_model, sha256_of
from training.calibration import calibrated, cross_fitted, expected_calibration_error, fit_calibration
from training.config import ExperimentConfig, config_from_dict
from training.crossval import check_finished_fold, oof_metrics, pool_rows, pooled_arrays
from training.data import CLASSES, PATCH_SIZE, config_samples, load_images
from training.ensemble import EnsembleClassifier, Preprocess
from training.lora import rebuild
from training.models import create_classifier
from training.out_of_domain import OutOfDomainError, out_of_domain_metrics
from training.plots import plot_calibration
from training.splits import fold_fingerprint, fold_indices, load_split, slide_digest, split_fingerprint
from training.thresholds import DEFAULT_RULE, DESCRIPTIONS, check_rule, rule_thresholds
from training.torch_compat import import_timm
from training.train import predict_scores, read_oof

OPSET = 18
PARITY_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2  # float16 weights and activations: about 3 significant digits
HALF_WEIGHTS_TOLERANCE = 5e-3  # float16 weights, float32 arithmetic: only the weights are rounded
HALF_WEIGHTS_MIN_ELEMENTS = 1024  # smaller tensors (biases, normalisation, calibration) stay float32
PARITY_PATCHES = 64
# ONNX files are protobufs, which cannot exceed 2 GB: larger ensembles (foundation-model folds)
# keep their weights in one external data file, `<name>.onnx.data`, beside the graph.
EXTERNAL_DATA_ABOVE_BYTES = 1_500_000_000


class ExportError(RuntimeError):
    """The exported graph failed a check; nothing was written."""


def load_member(fold_dir: Path) -> tuple[torch.nn.Module, dict, ExperimentConfig]:
    """Rebuild a fold's network from its folder: (network in eval mode, model_args, config)."""
    fold_dir = Path(fold_dir)
    for required in ("model_args.json", "model.safetensors", "config.yaml", "oof_predictions.csv"):
        if not (fold_dir / required).is_file():
            raise ExportError(f"{fold_dir}: missing {required}; is this a finished fold folder?")
    args = json.loads((fold_dir / "model_args.json").read_text())
    state = load_file(str(fold_dir / "model.safetensors"))
    if args.get("lora"):  # adapters and head only: load the base weights, apply and merge the adapters
        network = rebuild(args, state)
    else:
        network = create_classifier(**args)
        network.load_state_dict(state, strict=True)
    config = config_from_dict(yaml.safe_load((fold_dir / "config.yaml").read_text()), str(fold_dir / "config.yaml"))
    return network.eval(), args, config


def _parity_patches(samples) -> np.ndarray:
    """Real patches from the training data for the ONNX-vs-PyTorch check (first and last of the set)."""
    half = PARITY_PATCHES // 2
    chosen = samples[:half] + samples[-half:] if len(samples) > PARITY_PATCHES else samples
    return load_images(chosen)


def check_parity(ensemble: torch.nn.Module, onnx_path: Path, patches: np.ndarray,
                 tolerance: float = PARITY_TOLERANCE) -> float:
    """Max |P_onnxruntime - P_torch| over `patches`, as one batch and one by one; raises above tolerance."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(patches)).numpy()
    batched = session.run(["p_atypical"], {"patches": patches})[0]
    single = np.concatenate([session.run(["p_atypical"], {"patches": patches[i:i + 1]})[0] for i in range(min(4, len(patches)))])
    difference = max(float(np.abs(batched - expected).max()), float(np.abs(single - expected[:len(single)]).max()))
    if not np.isfinite(difference) or difference > tolerance:
        raise ExportError(f"ONNX Runtime and PyTorch disagree by {difference:.2e} in probability (limit {tolerance:.0e})")
    return difference


def to_float16(onnx_path: Path) -> None:
    """Rewrite the graph's weights and arithmetic in float16; input (uint8) and output stay as they are.

    For GPUs (tensor cores); ONNX Runtime's CPU provider runs such a graph slower than float32.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    save_onnx(convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True), onnx_path,
              external=data_file(onnx_path).is_file())


def store_weights_as_float16(onnx_path: Path) -> int:
    """Store the graph's large float32 weights as float16, each cast back to float32 by a Cast node.

    Halves the file while the arithmetic stays float32: ONNX Runtime folds the casts once, when the
    session is created, so what changes is only the weights' rounding (11 significant bits). Tensors
    under HALF_WEIGHTS_MIN_ELEMENTS stay as they are. Returns the number of tensors stored as float16.
    """
    model = onnx.load(str(onnx_path))
    graph = model.graph
    kept, casts = [], []
    for tensor in graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or np.prod(tensor.dims) < HALF_WEIGHTS_MIN_ELEMENTS:
            kept.append(tensor)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), name=f"{tensor.name}__float16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=onnx.TensorProto.FLOAT,
                                      name=f"{tensor.name}__to_float32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # the casts first: the graph's nodes must stay in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    save_onnx(model, onnx_path, external=data_file(onnx_path).is_file())
    return len(casts)


def data_file(onnx_path: Path) -> Path:
    """Where a graph's external weights lie, when it has them."""
    return onnx_path.with_name(onnx_path.name + ".data")


def save_onnx(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Write `model` to `path` (weights in `data_file(path)` when `external`) and check the files."""
    data_file(path).unlink(missing_ok=True)  # onnx appends to an existing data file
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data_file(path).name, size_threshold=1024)
        onnx.checker.check_model(str(path), full_check=True)  # by path: a >2 GB model cannot be checked in memory
    else:
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what its graph's weights will take)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _to_onnx(ensemble: torch.nn.Module, path: Path, external: bool = False) -> None:
    example = torch.zeros(2, PATCH_SIZE, PATCH_SIZE, 3, dtype=torch.uint8)
    torch.onnx.export(
        ensemble, (example,), str(path), input_names=["patches"], output_names=["p_atypical"],
        dynamic_shapes={"patches": {0: torch.export.Dim("N", min=1, max=65536)}},
        opset_version=OPSET, dynamo=True, external_data=external, verbose=False)
    model = onnx.load(str(path))  # with its external data, if any, into memory
    _drop_debug_records(model)
    save_onnx(model, path, external)


def _drop_debug_records(model: onnx.ModelProto) -> None:
    """Remove the exporter's per-node records (source stack traces, module names): they hold the
    paths of the machine that exported and change nothing the graph computes."""
    for graph in (model.graph, *model.functions):
        for node in graph.node:
            del node.metadata_props[:]


def member_split(fold_dir: Path) -> tuple[int | str, dict | None]:
    """A member's fold and the split its run trained on (None when the run has no split.json).

    The split is checked as resuming checks it (crossval.check_finished_fold): a split.json that
    does not match what the fold held out is refused, not recorded.
    """
    fold = json.loads((fold_dir / "summary.json").read_text())["fold"]
    split_file = fold_dir.parent / "split.json"
    if not split_file.is_file():
        return fold, None
    split = load_split(split_file)
    try:
        check_finished_fold(fold_dir, split, fold)
    except ValueError as error:
        raise ExportError(str(error)) from error
    return fold, split


def _member_info(fold_dir: Path, args: dict, fold, split: dict | None) -> dict:
    """What model.json says of a member, with the fingerprints of the split and fold it held out.

    evaluate refuses to score a fold with members that did not hold out exactly that fold.
    """
    return {"backbone": args["backbone"], "fold": fold,
            "fold_sha256": fold_fingerprint(split, fold) if split is not None and fold != "all" else None,
            "split_sha256": split_fingerprint(split) if split is not None else None,
            "mean": args["mean"], "std": args["std"], "crop": args.get("crop"),
            "checkpoint_sha256": sha256_of(fold_dir / "model.safetensors"),
            **({"stain": args["stain"]} if args.get("stain") else {})}


def training_slide_digests(member_splits, samples) -> list[str] | None:
    """slide_digest of every slide any member trained on, from (fold, split) pairs; None if a split is unknown."""
    slides = set()
    for fold, split in member_splits:
        if split is None:
            return None
        train_index, _ = fold_indices(split, samples, fold)
        slides |= {samples[i].slide for i in train_index if not samples[i].synthetic}
    return sorted(slide_digest(slide) for slide in slides)


def oof_for_views(fold_folders, members, samples, views, *, spacing_um=None) -> dict[str, dict]:
    """Pooled out-of-fold predictions as the exported graph computes them, with `views`.

    A member scored its validation fold with its config's test-time views; where those differ
    from the exported ones, its validation samples are scored again with the exported views, so
    that the threshold and the metrics in model.json belong to the graph that ships.
    """
    index_of = {sample.sample_id: index for index, sample in enumerate(samples)}
    rows_by_folder = []
    for folder, (network, args, config) in zip(map(Path, fold_folders), members):
        rows = read_oof(folder / "oof_predictions.csv")
        if tuple(config.tta_views) != tuple(views):
            missing = [row["sample_id"] for row in rows if row["sample_id"] not in index_of]
            if missing:
                raise ExportError(f"{folder}: out-of-fold sample {missing[0]} is not in the dataset, so it cannot be "
                                  f"scored again with the views {list(views)} (pass --data-root)")
            patches = load_images([samples[index_of[row["sample_id"]]] for row in rows], spacing_um=spacing_um)
            with torch.no_grad():
                scores = predict_scores(network, Preprocess.from_args(args), torch.from_numpy(patches), views)
            rows = [{**row, "score": float(score)} for row, score in zip(rows, scores)]
            print(f"export: {folder.name}: {len(rows)} out-of-fold samples scored again with views {list(views)} "
                  f"(trained with {list(config.tta_views)})")
        rows_by_folder.append((folder, rows))
    return pool_rows(rows_by_folder)


def _split_description(split) -> str:
    if split.leave_out:
        return f"leave-one-{split.leave_out}-out"
    return (f"{split.n_folds}-fold, grouped by slide, stratified by label"
            + (f" and {split.stratify}" if split.stratify else "") + f", seed {split.seed}")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _model_json(name, onnx_path, threshold, rule, views, members, metrics, training) -> dict:
    return {
        "format_version": 1,
        "name": name,
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_of(onnx_path),
        **({"onnx_data": data_file(onnx_path).name, "onnx_data_sha256": sha256_of(data_file(onnx_path))}
           if data_file(onnx_path).is_file() else {}),
        "input": {"name": "patches", "dtype": "uint8", "layout": "NHWC",
                  "height": PATCH_SIZE, "width": PATCH_SIZE, "channels": 3},
        "output": {"name": "p_atypical"},
        "classes": list(CLASSES),
        "threshold": threshold["value"],
        "threshold_rule": DESCRIPTIONS[rule],
        "threshold_rule_name": rule,
        "threshold_candidates": threshold["candidates"],
        "tta_views": list(views),
        "members": members,
        "training": training,
        "metrics": metrics,
        "provenance": {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "versions": {"torch": torch.__version__, "timm": import_timm().__version__,
                         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            "opset": OPSET,
        },
    }


def _check_the_container_accepts(model_dir: Path) -> None:
    """Load the staged folder with the container's own loader: a model it would refuse is never written."""
    try:
        load_model(model_dir=model_dir)
    except InputError as error:
        raise ExportError(f"the container would refuse this model: {error}") from error


def _install(staging: Path, out_dir: Path) -> None:
    """Replace the model files in `out_dir` with the staged ones (other files are left alone)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("*.onnx"), *out_dir.glob("*.onnx.data"), out_dir / "model.json"]:
        old.unlink(missing_ok=True)
    for new in staging.iterdir():
        shutil.move(str(new), out_dir / new.name)


def calibrate(pooled: dict[str, dict], plot_path: Path | None) -> tuple[float, float, dict]:
    """Fit (T, b) on pooled out-of-fold scores; set each row's probability to the calibrated one.

    Returns (temperature, bias, what model.json records); with `plot_path`, a reliability plot
    before/after. The record has the ECE before, after (fitted on the same scores) and after with
    each fold mapped by a fit on the other folds only (`ece_after_cross_fitted`: the honest one).
    """
    rows = list(pooled.values())
    scores, labels = np.array([r["score"] for r in rows]), np.array([r["label"] for r in rows])
    temperature, bias = fit_calibration(scores, labels)
    before, after = calibrated(scores, 1.0), calibrated(scores, temperature, bias)
    for row, probability in zip(rows, after):
        row["probability"] = float(probability)
    folds = np.array([str(r["fold"]) for r in rows])
    record = {"map": "sigmoid(score / temperature + bias)", "temperature": temperature, "bias": bias,
              "fitted_on": f"pooled out-of-fold scores, n = {len(rows)}",
              "ece_before": expected_calibration_error(labels, before),
              "ece_after": expected_calibration_error(labels, after)}
    if len(set(folds)) > 1:
        record["ece_after_cross_fitted"] = expected_calibration_error(labels, cross_fitted(scores, labels, folds))
    if plot_path is not None:
        plot_calibration(labels, before, after, f"T {temperature:.2f}, b {bias:+.2f}", plot_path)
    return temperature, bias, record


def export_model(fold_folders, out_dir: Path, *, name: str, views=None, data_root: str | None = None,
                 fp16: bool = False, half_weights: bool = False, calibration: bool = True,
                 external_data: bool | None = None, threshold_rule: str = DEFAULT_RULE,
                 out_of_domain: Path | None = None) -> dict:
    """Export `fold_folders` as one ensemble into `out_dir`; returns the model.json content.

    `fp16`: weights and arithmetic in float16 (for GPUs); `half_weights`: weights stored as float16,
    arithmetic in float32 (half the file, for CPUs). Either is checked against the float32 PyTorch
    ensemble at its own tolerance; the out-of-fold metrics are the float32 members'.

    `threshold_rule`: how the threshold is chosen from the pooled out-of-fold predictions
    (training.thresholds); model.json records every rule's threshold beside the one used.

    `out_of_domain`: a study folder whose leave-one-out runs trained the members' configs; their
    metrics on the source each left out go into model.json as `metrics.out_of_domain`
    (training.out_of_domain), the estimate of what the model does on a source it never saw.

    `external_data`: weights in `<name>.onnx.data` beside the graph; None decides by size
    (above EXTERNAL_DATA_ABOVE_BYTES of weights), since one ONNX file cannot exceed 2 GB.

    With `calibration`, a temperature and a bias fitted on the pooled out-of-fold scores go inside the
    graph, and the threshold and metrics are those of the calibrated probabilities; a reliability
    plot before/after is written to the first member's run folder as calibration_<name>.png.
    """
    started = time.perf_counter()
    check_rule(threshold_rule)
    if fp16 and half_weights:
        raise ExportError("--fp16 already stores the weights as float16; give one of --fp16 and --half-weights")
    if threshold_rule == "prevalence" and not calibration:
        raise ExportError("the prevalence rule assumes calibrated probabilities; drop --no-calibration or pick another rule")
    members = [load_member(folder) for folder in fold_folders]
    if not members:
        raise ExportError("no fold folders given")
    splits = [member_split(Path(folder)) for folder in fold_folders]  # checked before any work is done
    first_config = members[0][2]
    try:
        unseen = out_of_domain_metrics(out_of_domain, [m[2] for m in members]) if out_of_domain else None
    except OutOfDomainError as error:
        raise ExportError(str(error)) from error
    views = list(views or first_config.tta_views)
    samples = config_samples(first_config.data, data_root)
    pooled = oof_for_views(fold_folders, members, samples, views, spacing_um=first_config.data.slides_spacing_um)
    temperature, bias, calibration_record = (
        calibrate(pooled, Path(fold_folders[0]).parent / f"calibration_{name}.png") if calibration else (1.0, 0.0, None))
    candidates = rule_thresholds(*pooled_arrays(pooled))
    oof = oof_metrics(pooled, samples, threshold=candidates[threshold_rule])
    ensemble = EnsembleClassifier([m[0] for m in members], [Preprocess.from_args(m[1]) for m in members], views,
                                  temperature=temperature, bias=bias).eval()
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".export-") as scratch:
        staging = Path(scratch)
        onnx_path = staging / f"{name}.onnx"
        external = weight_bytes(ensemble) > EXTERNAL_DATA_ABOVE_BYTES if external_data is None else external_data
        _to_onnx(ensemble, onnx_path, external)
        parity_patches = _parity_patches(samples)
        difference = check_parity(ensemble, onnx_path, parity_patches)
        if fp16:
            to_float16(onnx_path)
            difference = check_parity(ensemble, onnx_path, parity_patches, tolerance=FP16_TOLERANCE)
        if half_weights:
            store_weights_as_float16(onnx_path)
            difference = check_parity(ensemble, onnx_path, parity_patches, tolerance=HALF_WEIGHTS_TOLERANCE)
        member_info = [_member_info(Path(folder), args, fold, split)
                       for folder, (_, args, _), (fold, split) in zip(fold_folders, members, splits)]
        training = {"dataset": first_config.data.kind, "n_samples": len(samples),
                    "n_atypical": int(sum(s.label for s in samples)), "n_slides": len({s.slide for s in samples}),
                    "split": _split_description(first_config.split), "configs": sorted({m[2].name for m in members}),
                    "backbones": sorted({m[1]["backbone"] for m in members}),
                    "slide_digests": training_slide_digests(splits, samples)}
        metrics = {"oof": oof, "oof_views": list(views), "export_parity_max_abs_difference": difference}
        if unseen:
            metrics["out_of_domain"] = unseen
        spec = _model_json(name, onnx_path, {"value": oof["threshold"], "candidates": candidates}, threshold_rule,
                           views, member_info, metrics, training)
        spec["precision"] = "float16" if fp16 else "float32"
        spec["weight_storage"] = "float16" if fp16 or half_weights else "float32"
        spec["calibration"] = calibration_record or {"temperature": 1.0, "bias": 0.0, "fitted_on": "not calibrated"}
        spec["confidence"] = "p_atypical"  # the Track 2 contract; the container refuses any other value
        (staging / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
        _check_the_container_accepts(staging)
        _install(staging, out_dir)
    size_mb = sum(path.stat().st_size for path in (out_dir / f"{name}.onnx", data_file(out_dir / f"{name}.onnx"))
                  if path.is_file()) / 1e6
    print(f"export: {len(members)} members x {len(views)} views -> {out_dir / (name + '.onnx')} ({size_mb:.1f} MB), "
          f"parity {difference:.1e}, threshold {oof['threshold']:.4f}, {time.perf_counter() - started:.0f} s")
    return spec
