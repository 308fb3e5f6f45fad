"""Labelled mitotic-figure patches: one record type, one reader per dataset layout, one image loader.

Every reader returns `Sample`s that keep what splitting and reporting need: the slide (the group no
split may cut), the domain (tumour, scanner, species, source dataset, where known), whether the
image is synthetic, and where the sample came from (table and row) so that errors can name it.

Layouts (`READERS`):
- `midog25`: the official MIDOG 2025 Track 2 training set, `MIDOG25_Atypical_Classification_Train_Set.csv`
  + `MIDOG25_Binary_Classification_Train_Set/<image_id>`; label `majority` (AMF/NMF), slide
  `filename`, domain `Tumor`, `Scanner`, `Origin`, `Species`. With `slides` (a folder holding the
  original images, MIDOG++), patches are cut around `coordinateX/coordinateY` of `filename` instead.
- `amibr`: AMi-Br (Bertram et al., BVM 2025), `AMI-BR.csv` + `patches/{atypical,normal}/<dataset>_<uid>.png`;
  label `majority_atypical`, slide `slide`, domain `dataset`.
- `folder`: `<root>/<class>/[<slide>/]<image>` with class folders `normal`/`atypical` (or NMF/AMF);
  without slide sub-folders every image is its own group, and splits cannot keep slides apart.
- `manifest`: a CSV with columns `image,label,slide[,synthetic][,<domain columns>...]`, image paths
  relative to the CSV; what the synthetic-image generator writes (with `synthetic` true).
"""

import csv
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from inference import crops
from inference.contract import CLASSES, PATCH_SIZE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_LABEL_WORDS = {"normal": 0, "nmf": 0, "false": 0, "0": 0, "no": 0,
                "atypical": 1, "amf": 1, "true": 1, "1": 1, "yes": 1}


class DataError(ValueError):
    """A dataset that cannot be read as described; the message names the file and row."""


@dataclass(frozen=True)
class Sample:
    """One labelled patch. `label` indexes CLASSES (1 = atypical).

    `point` is None for a patch file; for a patch cut from a larger image it is the (x, y) pixel
    centre in `path`. `origin` says where the sample was listed ("<table>, row <n>").
    """

    sample_id: str
    path: Path
    label: int
    slide: str
    domain: dict = field(default_factory=dict, hash=False, compare=False)
    synthetic: bool = False
    origin: str = ""
    point: tuple | None = None
    atypical_share: float | None = field(default=None, compare=False)  # experts voting atypical; None: no votes


def parse_label(value: str, *, where: str) -> int:
    """0 (normal) or 1 (atypical) from a class name, AMF/NMF, True/False or 1/0."""
    label = _LABEL_WORDS.get(str(value).strip().lower())
    if label is None:
        raise DataError(f"{where}: unknown label {value!r} (expected normal/atypical, NMF/AMF, True/False or 0/1)")
    return label


def _table_rows(table: Path, required: tuple) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of a CSV, after checking that its header has `required`."""
    if not table.is_file():
        raise DataError(f"{table}: not found")
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: columns {missing} missing (found {reader.fieldnames})")
        rows = 0
        for row_number, row in enumerate(reader, start=2):
            rows += 1
            yield f"{table}, row {row_number}", row
    if not rows:
        raise DataError(f"{table}: no rows")


def _existing(path: Path, where: str) -> Path:
    if not path.is_file():
        raise DataError(f"{where}: image {path} not found")
    return path


def vote_share(votes, *, where: str) -> float | None:
    """The share of the experts' votes that say atypical; empty votes are not counted, None when none is given."""
    given = [parse_label(vote, where=where) for vote in votes if vote is not None and str(vote).strip()]
    return sum(given) / len(given) if given else None


def read_amibr(root: Path) -> list[Sample]:
    """AMi-Br: label = `majority_atypical`, group = `slide`, domain = source dataset, votes `expert{1,2,3}_atypical`."""
    root = Path(root)
    samples = []
    for where, row in _table_rows(root / "AMI-BR.csv", ("slide", "dataset", "uid", "majority_atypical")):
        label = parse_label(row["majority_atypical"], where=where)
        name = f"{row['dataset']}_{row['uid']}"
        samples.append(Sample(
            sample_id=name, path=_existing(root / "patches" / CLASSES[label] / f"{name}.png", where),
            label=label, slide=row["slide"], origin=where,
            domain={"dataset": row["dataset"], "tumor": "human breast carcinoma", "species": "human"},
            atypical_share=vote_share([row.get(f"expert{k}_atypical") for k in (1, 2, 3)], where=where),
        ))
    return samples


MIDOG25_TABLE = "MIDOG25_Atypical_Classification_Train_Set.csv"
MIDOG25_IMAGES = "MIDOG25_Binary_Classification_Train_Set"
_MIDOG25_DOMAINS = {"tumor": "Tumor", "scanner": "Scanner", "origin": "Origin", "species": "Species"}


def read_midog25(root: Path, slides: Path | None = None) -> list[Sample]:
    """The official MIDOG 2025 Track 2 training set; with `slides`, patches cut from the original images."""
    root = Path(root)
    table = root if root.suffix == ".csv" else root / MIDOG25_TABLE
    required = ("image_id", "filename", "majority", *_MIDOG25_DOMAINS.values()) + (
        ("coordinateX", "coordinateY") if slides else ())
    samples = []
    for where, row in _table_rows(table, required):
        if slides:
            try:
                point = (float(row["coordinateX"]), float(row["coordinateY"]))
            except ValueError:
                raise DataError(f"{where}: coordinates {row['coordinateX']!r}, {row['coordinateY']!r} are not numbers") from None
            path = _existing(Path(slides) / row["filename"], where)
        else:
            point, path = None, _existing(table.parent / MIDOG25_IMAGES / row["image_id"], where)
        samples.append(Sample(
            sample_id=Path(row["image_id"]).stem, path=path, label=parse_label(row["majority"], where=where),
            slide=row["filename"], origin=where, point=point,
            domain={key: row[column] for key, column in _MIDOG25_DOMAINS.items()},
            atypical_share=vote_share([row.get(f"expert{k}") for k in (1, 2, 3)], where=where),
        ))
    return samples


def read_folder(root: Path) -> list[Sample]:
    """`<root>/<class>/[<slide>/]<image>`: the slide is the sub-folder, else the image itself."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = parse_label(class_dir.name, where=f"{root}: class folder {class_dir.name!r}")
        for path in sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            relative = path.relative_to(root)
            slide = str(path.parent.relative_to(class_dir)) if path.parent != class_dir else str(relative)
            samples.append(Sample(sample_id=str(relative.with_suffix("")), path=path, label=label, slide=slide,
                                  origin=str(path)))
    if not samples:
        raise DataError(f"{root}: no images in class folders (expected {root}/normal/... and {root}/atypical/...)")
    return samples


def read_manifest(table: Path) -> list[Sample]:
    """A CSV `image,label,slide[,synthetic][,domain columns]`; image paths relative to the CSV."""
    table = Path(table)
    samples = []
    for where, row in _table_rows(table, ("image", "label", "slide")):
        synthetic = parse_label(row.get("synthetic") or "false", where=where) == 1
        domain = {k: v for k, v in row.items() if k not in ("image", "label", "slide", "synthetic") and k}
        path = _existing(table.parent / row["image"], where)
        samples.append(Sample(sample_id=str(Path(row["image"]).with_suffix("")), path=path,
                              label=parse_label(row["label"], where=where), slide=row["slide"],
                              domain=domain, synthetic=synthetic, origin=where))
    return samples


READERS = {"midog25": read_midog25, "amibr": read_amibr, "folder": read_folder, "manifest": read_manifest}


def read_dataset(kind: str, root: Path, **options) -> list[Sample]:
    """Read a dataset of a registered layout (see READERS); `options` go to the reader (e.g. slides)."""
    if kind not in READERS:
        raise DataError(f"unknown dataset kind {kind!r}; known: {', '.join(READERS)}")
    samples = READERS[kind](Path(root), **{k: v for k, v in options.items() if v is not None})
    duplicated = len(samples) - len({s.sample_id for s in samples})
    if duplicated:
        raise DataError(f"{root}: {duplicated} sample ids occur more than once")
    return samples


def config_samples(data, root: str | Path | None = None) -> list[Sample]:
    """The samples a DataConfig names: its dataset (at `root` instead, if given) less its excluded slides."""
    samples = read_dataset(data.kind, root or data.root, slides=data.slides)
    excluded = set(data.exclude_slides)
    unknown = excluded - {sample.slide for sample in samples}
    if unknown:
        raise DataError(f"data.exclude_slides names {len(unknown)} slides the dataset lacks, e.g. {sorted(unknown)[0]}")
    return [sample for sample in samples if sample.slide not in excluded] if excluded else samples


def fit_to_size(image: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Centre-crop or centre-pad (black) an (H, W, 3) image to (size, size, 3), per axis."""
    return crops.fit_centred(image, height=size, width=size)


def _read_rgb(path: Path, where: str) -> np.ndarray:
    Image.MAX_IMAGE_PIXELS = None  # original region images are large by nature, and ours to trust
    try:
        with Image.open(path) as image:
            if image.mode not in ("RGB", "RGBA", "L", "P"):
                raise DataError(f"{where}: {path} has image mode {image.mode}; expected RGB")
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{where}: cannot read image {path} ({error})") from None


def load_image(sample: Sample, size: int = PATCH_SIZE) -> np.ndarray:
    """One sample's patch as (size, size, 3) uint8 RGB; patches far from size x size are refused."""
    where = sample.origin or str(sample.path)
    pixels = _read_rgb(sample.path, where)
    height, width = pixels.shape[:2]
    if not (size // 2 <= height <= 2 * size and size // 2 <= width <= 2 * size):
        raise DataError(f"{where}: {sample.path} is {width}x{height}, expected about {size}x{size}")
    return fit_to_size(pixels, size)


def cut_patches(samples: list[Sample], size: int = PATCH_SIZE, spacing_um: float | None = None) -> np.ndarray:
    """Patches centred on the samples' points, cut from their original images (each image read once).

    With `spacing_um` (the images' microns per pixel) they are resampled to the 0.25 um/px of the
    official crops first (crops.crop_points); the black fill beyond an image's edge is the official one.
    """
    patches = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    by_image = defaultdict(list)
    for index, sample in enumerate(samples):
        by_image[sample.path].append(index)
    for path, indices in by_image.items():
        image = _read_rgb(path, samples[indices[0]].origin)
        points = crops.as_points([samples[i].point for i in indices])
        outside = ~crops.inside(points, height=image.shape[0], width=image.shape[1])
        if outside.any():
            sample = samples[indices[int(np.flatnonzero(outside)[0])]]
            raise DataError(f"{sample.origin}: point {sample.point} lies outside {path} ({image.shape[1]}x{image.shape[0]})")
        patches[indices] = crops.crop_points(image, points, size=size, spacing_um=spacing_um)
    return patches


def load_images(samples: list[Sample], size: int = PATCH_SIZE, progress: bool = False,
                spacing_um: float | None = None) -> np.ndarray:
    """All patches of `samples` as one (N, size, size, 3) uint8 array, in order.

    Patch files are read as they are; samples with a point are cut from their original images.
    """
    from tqdm import tqdm

    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    cut = [i for i, sample in enumerate(samples) if sample.point is not None]
    if cut:
        images[cut] = cut_patches([samples[i] for i in cut], size, spacing_um)
    files = [i for i, sample in enumerate(samples) if sample.point is None]
    for index in tqdm(files, desc="reading patches", unit="patch", disable=not progress):
        images[index] = load_image(samples[index], size)
    return images


def labels_of(samples: list[Sample]) -> np.ndarray:
    """The labels of `samples` as an int64 array."""
    return np.array([sample.label for sample in samples], dtype=np.int64)


LABEL_MODES = ("majority", "soft")


def targets_of(samples: list[Sample], mode: str) -> np.ndarray:
    """Training targets, P(atypical) per sample: the majority label, or (`soft`) the share of experts voting atypical.

    Samples without votes (readers that have none, synthetic images) keep their majority label,
    and a line says how many.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"labels must be one of {list(LABEL_MODES)}, got {mode!r}")
    labels = labels_of(samples).astype(np.float32)
    if mode == "majority":
        return labels
    shares = [sample.atypical_share for sample in samples]
    missing = sum(share is None for share in shares)
    if missing:
        print(f"labels: soft: {missing} of {len(samples)} samples carry no expert votes; "
              "their majority label is their target")
    return np.array([label if share is None else share for label, share in zip(labels, shares)], np.float32)
