"""The official Track 2 interface: one class and P(atypical) per page of the stacked crops."""

from pathlib import Path
from typing import Any

from inference.contract import STACK_OUTPUT, STACK_SLUG
from inference.errors import Stopwatch, log
from inference.images import fit_pages, read_stack
from inference.model import BATCH_SIZE, Model, predict
from inference.sockets import socket_by_slug, socket_image_path


def stack_entry(probability: float, model: Model) -> dict[str, Any]:
    """One page's output: its class by the threshold, and P(atypical) as its confidence."""
    negative, positive = model.classes
    return {"class": positive if probability >= model.threshold else negative, "confidence": float(probability)}


def classify_stack(*, sockets: list[dict[str, Any]], input_dir: Path, model: Model,
                   stopwatch: Stopwatch) -> dict[str, Any]:
    """Track 2: one class and its P(atypical) as confidence per page of the stacked cropouts."""
    path = socket_image_path(socket_by_slug(sockets, STACK_SLUG), input_dir=input_dir)
    log(f"input {path}")
    with stopwatch.phase("read"):
        pages = read_stack(path=path)
    log(f"read {len(pages)} pages of {pages.shape[1]}x{pages.shape[2]}, {stopwatch.ms('read')}")
    with stopwatch.phase("infer"):
        pages = fit_pages(pages, height=model.height, width=model.width)
        probabilities = predict(model, pages)
    log(f"infer {len(pages)} pages in {-(-len(pages) // BATCH_SIZE)} run(s), {stopwatch.ms('infer')}")
    return {STACK_OUTPUT: [stack_entry(probability, model) for probability in map(float, probabilities)]}
