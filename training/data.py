"""Labelled mitotic-figure patches: one record type, one reader per dataset layout, one image loader.

Every reader returns `Sample`s that keep what splitting and reporting need: the slide (the group no
split may cut), the domain (dataset, tumour, scanner, species where known) and whether the image is
synthetic. Datasets: AMi-Br (Bertram et al., "Atypical Mitotic Figures in Breast Cancer", BVM 2025),
laid out as `AMI-BR.csv` + `patches/{atypical,normal}/<dataset>_<uid>.png`.
"""

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "atypical")
PATCH_SIZE = 128


class DataError(ValueError):
    """A dataset that cannot be read as described; the message names the file and row."""


@dataclass(frozen=True)
class Sample:
    """One labelled patch. `label` indexes CLASSES (1 = atypical)."""

    sample_id: str
    path: Path
    label: int
    slide: str
    domain: dict = field(default_factory=dict, hash=False, compare=False)
    synthetic: bool = False


def _parse_bool(value: str, *, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise DataError(f"{where}: expected True/False, got {value!r}")


def read_amibr(root: Path) -> list[Sample]:
    """AMi-Br: label = `majority_atypical`, group = `slide`, domain = source dataset."""
    root = Path(root)
    table = root / "AMI-BR.csv"
    if not table.is_file():
        raise DataError(f"{table}: not found (expected the AMi-Br label table)")
    samples = []
    with table.open(newline="") as handle:
        for row_number, row in enumerate(csv.DictReader(handle), start=2):
            where = f"{table}, row {row_number}"
            try:
                dataset, uid, slide = row["dataset"], row["uid"], row["slide"]
                atypical = _parse_bool(row["majority_atypical"], where=where)
            except KeyError as missing:
                raise DataError(f"{where}: column {missing} missing") from None
            path = root / "patches" / CLASSES[atypical] / f"{dataset}_{uid}.png"
            if not path.is_file():
                raise DataError(f"{where}: image {path} not found")
            samples.append(Sample(
                sample_id=f"{dataset}_{uid}", path=path, label=int(atypical), slide=slide,
                domain={"dataset": dataset, "tumor": "human breast carcinoma", "species": "human"},
            ))
    if not samples:
        raise DataError(f"{table}: no rows")
    return samples


READERS = {"amibr": read_amibr}


def read_dataset(kind: str, root: Path) -> list[Sample]:
    """Read a dataset of a registered layout (see READERS)."""
    if kind not in READERS:
        raise DataError(f"unknown dataset kind {kind!r}; known: {', '.join(READERS)}")
    return READERS[kind](Path(root))


def fit_to_size(image: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Centre-crop or centre-pad (black) an (H, W, 3) image to (size, size, 3), per axis."""
    for axis in (0, 1):
        extent = image.shape[axis]
        if extent > size:
            start = (extent - size) // 2
            image = np.take(image, range(start, start + size), axis=axis)
        elif extent < size:
            before = (size - extent) // 2
            pad = [(0, 0)] * image.ndim
            pad[axis] = (before, size - extent - before)
            image = np.pad(image, pad)
    return image


def load_image(path: Path, size: int = PATCH_SIZE) -> np.ndarray:
    """Read one patch as (size, size, 3) uint8 RGB."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("RGB", "RGBA", "L"):
                raise DataError(f"{path}: unsupported image mode {image.mode} (need RGB)")
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError) as error:
        raise DataError(f"{path}: cannot read image ({error})") from None
    height, width = pixels.shape[:2]
    if not (size // 2 <= height <= 2 * size and size // 2 <= width <= 2 * size):
        raise DataError(f"{path}: image is {width}x{height}, expected about {size}x{size}")
    return fit_to_size(pixels, size)


def load_images(samples: list[Sample], size: int = PATCH_SIZE) -> np.ndarray:
    """All patches of `samples` as one (N, size, size, 3) uint8 array, in order."""
    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for index, sample in enumerate(samples):
        images[index] = load_image(sample.path, size)
    return images


def labels_of(samples: list[Sample]) -> np.ndarray:
    """The labels of `samples` as an int64 array."""
    return np.array([sample.label for sample in samples], dtype=np.int64)
