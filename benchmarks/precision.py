"""float32 vs float16 weights vs dynamic int8 vs float16: the change in quality out of fold, and the speed.

The shipped ensemble was trained on all of AMi-Br, so scoring it there would measure nothing. Quality
is measured out of fold instead: for each fold k, member k alone is exported (`export_model`, parity
check included), stored with float16 weights and float32 arithmetic
(`training.export.store_weights_as_float16`, what `export --half-weights` ships), quantised with
`onnxruntime.quantization.quantize_dynamic` and converted with `training.export.to_float16`; each
version scores fold k's validation patches (split.json) in ONNX Runtime on the CPU; the five folds
are pooled and scored at the run's threshold (results.json `oof.threshold`). Speed is that of the
shipped 5-member graph converted the same ways: throughput, session creation, and process.py per
stack (cold, as startup.py) with the converted graph.
"""

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import quantize_dynamic

from benchmarks import quiet
from benchmarks.common import DATA_ROOT, MODEL_DIR, ROOT, RUN_DIR, amibr_patches, median, ms, report
from benchmarks.startup import SAMPLE_STACK, run_process
from benchmarks.throughput import open_session, seconds_per_run
from training.crossval import fold_dirs
from training.data import labels_of, load_images, read_dataset
from training.export import export_model, store_weights_as_float16, to_float16
from training.metrics import binary_metrics
from training.splits import fold_indices, load_split
from training.train import read_oof

VARIANTS = ("float32", "float16 weights", "int8 dynamic", "float16")


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation (weights int8, activations quantised per call: ConvInteger on the CPU)."""
    graph = onnx.load(str(source))
    del graph.graph.value_info[:]  # the exporter's shapes of the example batch clash with shape inference
    stripped = target.with_suffix(".float32.onnx")
    onnx.save(graph, str(stripped))
    logging.disable(logging.WARNING)  # its advice to pre-process, and a page per uint8 tensor it leaves alone
    try:
        quantize_dynamic(str(stripped), str(target))
    finally:
        logging.disable(logging.NOTSET)
    stripped.unlink()


def convert(float32: Path, folder: Path) -> dict[str, Path]:
    """The float32 graph and its float16-weight, int8 and float16 versions, side by side in `folder`."""
    paths = {"float32": float32, "float16 weights": folder / f"{float32.stem}.half-weights.onnx",
             "int8 dynamic": folder / f"{float32.stem}.int8.onnx", "float16": folder / f"{float32.stem}.fp16.onnx"}
    shutil.copy(float32, paths["float16 weights"])
    store_weights_as_float16(paths["float16 weights"])
    quantize_int8(float32, paths["int8 dynamic"])
    shutil.copy(float32, paths["float16"])
    to_float16(paths["float16"])
    return paths


def score(path: Path, patches: np.ndarray, threads: int) -> np.ndarray | str:
    """P(atypical) of `patches` in ONNX Runtime on the CPU, or why the CPU provider cannot run the graph."""
    try:
        session = open_session(path, threads)
        batches = [patches[start:start + 64] for start in range(0, len(patches), 64)]
        return np.concatenate([session.run(None, {"patches": batch})[0] for batch in batches])
    except Exception as error:  # onnxruntime's own exception types
        return f"ONNX Runtime's CPU provider cannot run it: {' '.join(str(error).split())[:200]}"


def out_of_fold(run_dir: Path, scratch: Path, threads: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per variant the pooled out-of-fold probabilities (or an error), the labels, and PyTorch's own OOF."""
    samples = read_dataset("amibr", DATA_ROOT)
    split = load_split(run_dir / "split.json")
    pooled = {variant: [] for variant in VARIANTS}
    labels, trained = [], []
    for fold_dir in fold_dirs(run_dir):
        fold = int(fold_dir.name.removeprefix("fold_"))
        _, val_index = fold_indices(split, samples, fold)
        val_samples = [samples[i] for i in val_index]
        spec = export_model([fold_dir], scratch / fold_dir.name, name=fold_dir.name, data_root=str(DATA_ROOT),
                            calibration=False)  # the probabilities the fold itself gives, which the run's threshold is for
        paths = convert(scratch / fold_dir.name / spec["onnx"], scratch / fold_dir.name)
        patches = load_images(val_samples)
        for variant, path in paths.items():
            pooled[variant].append(score(path, patches, threads))
        labels.append(labels_of(val_samples))
        oof = {row["sample_id"]: float(row["probability"]) for row in read_oof(fold_dir / "oof_predictions.csv")}
        trained.append(np.array([oof[s.sample_id] for s in val_samples]))
    joined = {}
    for variant, parts in pooled.items():
        errors = [part for part in parts if isinstance(part, str)]
        joined[variant] = errors[0] if errors else np.concatenate(parts)
    return joined, np.concatenate(labels), np.concatenate(trained)


def quality_rows(probabilities: dict, labels: np.ndarray, trained: np.ndarray, threshold: float) -> list[list]:
    """One row per version: ROC AUC and balanced accuracy, their change, the largest change in P, flipped classes."""
    reference = probabilities["float32"]
    base = binary_metrics(labels, reference, threshold)
    rows = [["float32, PyTorch (the folds' own oof_predictions.csv)",
             *_metric_cells(binary_metrics(labels, trained, threshold), base, trained, reference, threshold)]]
    for variant, values in probabilities.items():
        if isinstance(values, str):
            rows.append([variant, values, "", "", "", "", ""])
            continue
        rows.append([f"{variant}, ONNX Runtime CPU",
                     *_metric_cells(binary_metrics(labels, values, threshold), base, values, reference, threshold)])
    return rows


def _metric_cells(metrics: dict, base: dict, values, reference, threshold) -> list[str]:
    flips = int(np.sum((values >= threshold) != (reference >= threshold)))
    return [f"{metrics['roc_auc']:.4f}", f"{metrics['roc_auc'] - base['roc_auc']:+.4f}",
            f"{metrics['balanced_accuracy']:.4f}", f"{metrics['balanced_accuracy'] - base['balanced_accuracy']:+.4f}",
            f"{np.abs(values - reference).max():.1e}", str(flips)]


def model_folder(onnx_path: Path, folder: Path, precision: str) -> Path:
    """A model folder for process.py: the shipped model.json pointing at `onnx_path` (copied in)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, folder / onnx_path.name)
    spec = json.loads((MODEL_DIR / "model.json").read_text())
    spec.update(onnx=onnx_path.name, onnx_sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                precision=precision)
    (folder / "model.json").write_text(json.dumps(spec, indent=2))
    return folder


def speed_rows(scratch: Path, *, threads: int, runs: int, python: str) -> list[list]:
    """One row per version of the shipped graph: size, session creation, throughput, process.py per stack."""
    shipped = MODEL_DIR / json.loads((MODEL_DIR / "model.json").read_text())["onnx"]
    scratch.mkdir(parents=True, exist_ok=True)
    paths = convert(shipped, scratch)
    folders = {variant: model_folder(path, scratch / variant.replace(" ", "_"), variant)
               for variant, path in paths.items()}
    patches = amibr_patches(64)
    cold = {variant: [] for variant in VARIANTS}
    for _ in range(runs):  # interleaved, so that load changes hit every variant alike
        for variant, folder in folders.items():
            cold[variant].append(run_process(python, ROOT / "process.py", input_dir=SAMPLE_STACK, model_dir=folder,
                                             timings=False)["total"])
    rows = []
    for variant, path in paths.items():
        opened = []
        for _ in range(5):
            began = time.perf_counter()
            session = open_session(path, threads)
            opened.append(time.perf_counter() - began)
        per_run = {batch: seconds_per_run(session, patches[:batch], min_runs=5, min_seconds=2.0) for batch in (16, 64)}
        rows.append([variant, f"{path.stat().st_size / 1e6:.1f}", ms(median(opened)),
                     *(f"{batch / per_run[batch]:.0f}" for batch in (16, 64)), ms(median(cold[variant])),
                     "not measured (no GPU)" if variant == "float16" else "-"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RUN_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="cold process.py runs per variant")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    threshold = json.loads((args.run / "results.json").read_text())["oof"]["threshold"]
    with tempfile.TemporaryDirectory() as scratch:
        probabilities, labels, trained = out_of_fold(args.run, Path(scratch), args.threads)
        report("precision_quality", f"Quality out of fold (n = {len(labels)}), each fold's member alone, at threshold "
               f"{threshold:.4f}", ["version", "ROC AUC", "change", "balanced accuracy", "change",
                                    "max abs P change vs float32", "classes flipped"],
               quality_rows(probabilities, labels, trained, threshold), state="not timed",
               packages=("onnxruntime", "torch"),
               notes=["'change' is against float32 in ONNX Runtime. The float16 graph runs on ONNX Runtime's CPU "
                      "provider, which computes in float32 where it lacks a float16 kernel: the change shown is "
                      "that of float16 weights and of float16 activations between such kernels, not of a GPU's "
                      "float16 arithmetic."])
        state = quiet.from_arguments(args)
        report("precision_speed", f"Speed of the shipped ensemble by precision, CPU, {args.threads} threads",
               ["version", "graph MB", "session creation in a warm process, ms", "patches/s, batch 16",
                "patches/s, batch 64",
                "process.py per 16-patch stack, cold, median ms", "GPU"],
               speed_rows(Path(scratch) / "speed", threads=args.threads, runs=args.runs, python=args.python),
               state=state, notes=[f"Cold per-stack times: {args.runs} interleaved runs per version of process.py "
                                   "with a model folder holding that graph."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
