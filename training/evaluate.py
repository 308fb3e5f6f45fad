"""Evaluate an exported model as the MIDOG 2025 Track 2 evaluator does, with bootstrapped 95% intervals.

The model runs through ONNX Runtime with the container's own functions (the inference package:
reading, page fitting, batching, thresholding), never through PyTorch, so the numbers are those of
the container. Two kinds of input:

- a labelled patch set, read by any reader of training.data (patches scored in batches);
- grand-challenge cases: stack images plus a `ground_truth.json` in the official evaluator's form
  `[{"image": "stack_1.tiff", "labels": ["normal", ...], "tumordomains": [1, ...]}]`; each stack
  goes through the container's stack handler and its output JSON is written next to the metrics.

Metrics follow the official evaluation container: sensitivity, specificity (from the classes),
balanced accuracy, accuracy and ROC AUC (from P(atypical)) pooled over all pages, and the same per
tumour domain, under its key names (`overall_balanced_accuracy`, `domain_<d>`, ...). Intervals are
percentile bootstraps over pages (scipy.stats.bootstrap, paired); the ROC band comes from
grand-challenge-metrics (`get_bootstrapped_roc_ci_curves`). The numbers are training.statistics',
the figures training.plots'; this module runs the model and writes the files.
"""

import json
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from inference.contract import CLASSES, STACK_OUTPUT, STACK_SLUG
from inference.errors import Stopwatch
from inference.images import fit_pages
from inference.model import load_model, predict
from inference.output import write_json
from inference.run import select_handler
from inference.sockets import read_sockets
from inference.stack import stack_entry
from training.data import load_images
from training.plots import plot_evaluation
from training.splits import fold_fingerprint, slide_digest
from training.statistics import bootstrap_intervals, evaluator_aggregates

CLASS_IDS = {name: index for index, name in enumerate(CLASSES)}  # the evaluator's ids: normal 0, atypical 1


def metrics_document(labels, entries: list[dict], probabilities, domains, model) -> dict:
    """metrics.json: the evaluator's aggregates from the outputs, intervals, and how the outputs were read."""
    predicted = np.array([CLASS_IDS[e["class"]] for e in entries])
    labels = np.asarray(labels)
    document = {
        "model": model.name, "threshold": model.threshold,
        "n": int(len(labels)), "n_atypical": int(labels.sum()),
        "aggregates": evaluator_aggregates(labels, predicted, probabilities, domains),
        "confidence_intervals_95": bootstrap_intervals(labels, predicted, probabilities),
    }
    return document


def _write(out_dir: Path, document: dict, labels, probabilities, threshold) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path=out_dir / "metrics.json", payload=document)  # atomic: never half-written
    plot_evaluation(labels, probabilities, document["aggregates"], threshold, out_dir)
    return document


def held_out_status(model_dir: Path, samples) -> str:
    """Whether `samples` are proven unseen by the model's members; refuses samples from their training slides.

    model.json lists a digest of every slide any member trained on (training.slide_digests); a
    model exported before it did cannot prove anything, and the result says so.
    """
    digests = json.loads((Path(model_dir) / "model.json").read_text()).get("training", {}).get("slide_digests")
    if digests is None:
        print(f"evaluate: WARNING: {model_dir}/model.json does not list its training slides, so nothing shows that "
              "these samples were not trained on; score only data you know it never saw", file=sys.stderr)
        return "unproven: model.json lists no training slides"
    seen = [s for s in samples if slide_digest(s.slide) in set(digests)]
    if seen:
        slides = sorted({s.slide for s in seen})
        raise ValueError(f"{len(seen)} of the {len(samples)} samples come from {len(slides)} slides the model's "
                         f"members trained on (e.g. {slides[0]}); scoring them would report a number the model did "
                         "not earn. Evaluate on slides none of its members saw")
    return "proven: no sample is from a slide any member trained on"


def evaluate_patches(model_dir: Path, samples, out_dir: Path, *, domain_key: str | None = None) -> dict:
    """Score a labelled patch set with the exported model; write metrics.json, predictions and plots."""
    held_out = held_out_status(model_dir, samples)
    model = load_model(model_dir=Path(model_dir))
    pages = fit_pages(load_images(samples), height=model.height, width=model.width)
    probabilities = predict(model, pages).astype(np.float64)
    entries = [stack_entry(float(p), model) for p in probabilities]
    labels = np.array([s.label for s in samples])
    domains = [s.domain.get(domain_key, "all") if domain_key else "all" for s in samples]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "predictions.csv").open("w") as handle:
        handle.write("sample_id,label,domain,p_atypical,class\n")
        handle.writelines(f"{s.sample_id},{s.label},{d},{p:.6f},{e['class']}\n"
                          for s, d, p, e in zip(samples, domains, probabilities, entries))
    document = {**metrics_document(labels, entries, probabilities, domains, model), "held_out": held_out}
    return _write(out_dir, document, labels, probabilities, model.threshold)


def check_members_held_out(model_dir: Path, split: dict, fold: int) -> None:
    """Refuse to score fold `fold` of `split` with a model any of whose members may have trained on it.

    A member is known to have held out exactly these samples when model.json records the
    fingerprint of its held-out fold and it equals this fold's (training.splits.fold_fingerprint).
    """
    spec = json.loads((Path(model_dir) / "model.json").read_text())
    members = spec.get("members") or []
    if not members:
        raise ValueError(f"{model_dir}/model.json lists no members, so nothing shows that they held out fold {fold}; "
                         "evaluate it only on data it never trained on")
    wanted = fold_fingerprint(split, fold)
    for index, member in enumerate(members):
        recorded = member.get("fold_sha256")
        if recorded != wanted:
            reason = ("model.json does not record which samples it held out" if recorded is None
                      else f"it held out other samples (its fold {member.get('fold')} of another split or fold)")
            raise ValueError(f"member {index} ({member.get('backbone')}, fold {member.get('fold')}) of {model_dir} may "
                             f"have trained on fold {fold}'s samples: {reason}. Scoring it there would report a number "
                             "it did not earn; export that fold alone, or evaluate on data no member saw")


def _stack_case(stack: Path, folder: Path) -> Path:
    """An input folder laid out as grand-challenge lays it out, holding one stack (a link, not a copy).

    As on the platform, the file carries a UUID name and inputs.json its upload name.
    """
    images = folder / "images" / STACK_SLUG
    images.mkdir(parents=True)
    (images / f"{uuid.uuid4()}{stack.suffix}").symlink_to(stack.resolve())
    socket = {"image": {"name": stack.name},
              "interface": {"slug": STACK_SLUG, "relative_path": f"images/{STACK_SLUG}"}}
    (folder / "inputs.json").write_text(json.dumps([socket]))
    return folder


def read_ground_truth(path: Path) -> list[dict]:
    """The official ground_truth.json, checked: one label and one domain per page."""
    truth = json.loads(Path(path).read_text())
    for index, case in enumerate(truth):
        if not {"image", "labels", "tumordomains"} <= set(case):
            raise ValueError(f"{path}: entry {index} lacks image, labels or tumordomains")
        if len(case["labels"]) != len(case["tumordomains"]) or set(case["labels"]) - set(CLASS_IDS):
            raise ValueError(f"{path}: entry {index} ({case['image']}): labels must be normal/atypical, one domain each")
    return truth


def evaluate_cases(model_dir: Path, stacks_dir: Path, ground_truth: Path, out_dir: Path) -> dict:
    """Run the container's stack handler on every stack of ground_truth.json; evaluate the outputs."""
    model = load_model(model_dir=Path(model_dir))
    out_dir = Path(out_dir)
    labels, domains, entries = [], [], []
    for case in read_ground_truth(ground_truth):
        stack = Path(stacks_dir) / case["image"]
        if not stack.is_file():
            raise FileNotFoundError(f"{stack}: named by {ground_truth} but not found")
        with tempfile.TemporaryDirectory() as scratch:
            input_dir = _stack_case(stack, Path(scratch))
            sockets = read_sockets(input_dir=input_dir)
            output = select_handler(sockets)(sockets=sockets, input_dir=input_dir, model=model,
                                             stopwatch=Stopwatch())
        result = output[STACK_OUTPUT]
        if len(result) != len(case["labels"]):
            raise ValueError(f"{case['image']}: {len(result)} outputs for {len(case['labels'])} labels")
        write_json(path=out_dir / "outputs" / f"{stack.stem}.json", payload=result)
        labels += [CLASS_IDS[label] for label in case["labels"]]
        domains += case["tumordomains"]
        entries += result
    probabilities = np.array([e["confidence"] for e in entries])  # P(atypical), as the evaluator reads it
    document = metrics_document(labels, entries, probabilities, domains, model)
    return _write(out_dir, document, labels, probabilities, model.threshold)
