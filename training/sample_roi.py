"""Synthetic whole region of interest with candidate points: the sample case of the container's points interface.

The project's second sample case (test/points/input/), drawn procedurally like the first
(training/sample_stack.py, whose stain model and figures it reuses): a 640x480 H&E-like region at
0.25 um/px, stroma and interphase nuclei painted as stain concentrations and turned into RGB by the
Beer-Lambert model of colour deconvolution (Ruifrok & Johnston, Anal Quant Cytol Histol 2001), with
mitotic figures from `render_patch` blended in at known points. Two figures lie within 20 px of an
edge, so their crops carry black borders. The case is laid out as grand-challenge hands a Track 1
detector's output on to the next algorithm: the image socket `histopathology-region-of-interest-cropout`
and the Multiple points socket `mitotic-figures` (a file, `mitotic-figures.json`, in mm, written the
way the Track 1 containers write it). The figures' kinds mean nothing to a real classifier; the
case only exercises the container.

The image lies under a UUID name, as grand-challenge stores it, with its upload name in inputs.json
(see training/sample_stack.py). Run `python -m training make-sample --points` to write the case.
"""

import json
from pathlib import Path

import numpy as np

from inference.contract import PATCH_SIZE, POINTS_SLUG, RELATIVE_PATHS, ROI_SLUG
from training.sample_stack import (
    EOSIN_OD,
    HAEMATOXYLIN_OD,
    box_blur,
    ellipse,
    image_socket,
    platform_file_name,
    render_patch,
    smooth_noise,
    write_stack,
)

ROI_RELATIVE_PATH = RELATIVE_PATHS[ROI_SLUG]
POINTS_FILE = RELATIVE_PATHS[POINTS_SLUG]
SAMPLE_NAME = "roi_sample.tiff"
ROI_WIDTH, ROI_HEIGHT = 640, 480
SPACING_MM = 0.00025  # 0.25 um/px, as SimpleITK reads the TIFF's 40,000 px/cm
# (x, y) pixel centre and kind of each figure, in the order of the points file; not whole pixels,
# so the case exercises the rounding of inference/crops.py too.
FIGURES = (
    (150.3, 110.6, "normal"),
    (330.0, 250.0, "atypical"),
    (520.7, 95.2, "normal"),
    (230.4, 390.8, "atypical"),
    (450.0, 400.0, "normal"),
    (628.2, 300.4, "atypical"),  # 12 px from the right edge
    (40.2, 467.7, "normal"),  # 12 px from the bottom edge
)
DETECTION_PROBABILITIES = (0.93, 0.88, 0.81, 0.9, 0.76, 0.84, 0.79)  # what a detector might have said
NUCLEUS_WINDOW = 40  # side of the square each interphase nucleus is drawn in
FIGURE_CLEARANCE = 34  # no interphase nucleus centre closer than this to a figure


def roi_stroma(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Eosin concentration of a height x width region: wavy fibres over blotchy staining, with pale clefts."""
    side = max(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(float)
    angle = rng.uniform(0, np.pi)
    warp = 5.0 * smooth_noise(rng, 12, side)[:height, :width]
    fibres = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) / rng.uniform(1.5, 3.0) + warp)
    blotches = 0.5 + 0.5 * smooth_noise(rng, 40, side)[:height, :width]
    eosin = 0.55 + 0.22 * fibres * blotches + 0.15 * smooth_noise(rng, 16, side)[:height, :width]
    clefts = box_blur(np.clip(smooth_noise(rng, 24, side)[:height, :width] - 0.55, 0, None) * 2.2, 3)
    return np.clip(eosin * (1 - clefts), 0.03, None)


def nucleus(rng: np.random.Generator) -> np.ndarray:
    """Haematoxylin of one interphase nucleus (round tumour nucleus or slim fibroblast), centred in its window."""
    centre = np.full(2, NUCLEUS_WINDOW / 2)
    slim = rng.random() < 0.3
    axes = (rng.uniform(9, 14), rng.uniform(2.5, 4)) if slim else (rng.uniform(7, 11), rng.uniform(5.5, 9))
    angle = rng.uniform(0, np.pi)
    body = ellipse(centre, axes, angle, sharpness=1.2, size=NUCLEUS_WINDOW)
    inner = ellipse(centre, (axes[0] - 1.5, axes[1] - 1.5), angle, sharpness=1.2, size=NUCLEUS_WINDOW)
    speckle = box_blur(rng.random((NUCLEUS_WINDOW, NUCLEUS_WINDOW)), 1)
    nucleolus = ellipse(centre + rng.uniform(-2, 2, 2), (1.5, 1.3), 0, sharpness=2.0, size=NUCLEUS_WINDOW)
    density = rng.uniform(0.7, 1.0) if slim else rng.uniform(0.5, 0.8)
    return body * density * (0.55 + 0.9 * speckle) + 0.3 * (body - inner) + 0.5 * nucleolus * (not slim)


def paste(target: np.ndarray, source: np.ndarray, *, top: int, left: int, combine) -> None:
    """target[top:, left:] = combine(target part, source part), both clipped to the target."""
    bottom, right = min(top + source.shape[0], target.shape[0]), min(left + source.shape[1], target.shape[1])
    row, column = max(top, 0), max(left, 0)
    if bottom > row and right > column:
        part = source[row - top:bottom - top, column - left:right - left]
        target[row:bottom, column:right] = combine(target[row:bottom, column:right], part)


def alpha_over(under: np.ndarray, over: np.ndarray) -> np.ndarray:
    """`over` (..., 4: RGB and alpha) composited over `under` (..., 3)."""
    return over[..., :3] * over[..., 3:] + under * (1 - over[..., 3:])


def roi_haematoxylin(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """Background haematoxylin with `count` interphase nuclei, none on the figures' points."""
    haematoxylin = 0.1 + 0.05 * smooth_noise(rng, 24, max(height, width))[:height, :width]
    figures = np.array([(x, y) for x, y, _ in FIGURES])
    placed = 0
    while placed < count:
        centre = rng.uniform(-6, 6, 2) + rng.uniform(0, 1, 2) * (width, height)
        if np.hypot(*(figures - centre).T).min() < FIGURE_CLEARANCE:
            continue
        top, left = int(round(centre[1])) - NUCLEUS_WINDOW // 2, int(round(centre[0])) - NUCLEUS_WINDOW // 2
        paste(haematoxylin, nucleus(rng), top=top, left=left, combine=np.maximum)
        placed += 1
    return haematoxylin


def render_roi(seed: int = 0) -> np.ndarray:
    """(ROI_HEIGHT, ROI_WIDTH, 3) uint8: H&E-like tissue with a figure of FIGURES' kind centred on each point."""
    rng = np.random.default_rng(seed)
    eosin = roi_stroma(rng, ROI_HEIGHT, ROI_WIDTH)
    haematoxylin = roi_haematoxylin(rng, ROI_HEIGHT, ROI_WIDTH, count=int(rng.integers(170, 200)))
    optical_density = haematoxylin[..., None] * HAEMATOXYLIN_OD + eosin[..., None] * EOSIN_OD  # (H, W, 3)
    rgb = 255.0 * np.exp(-optical_density) + rng.normal(0, 2.5, optical_density.shape)
    # Each figure comes with its own cell and a little stroma; a soft disc blends it in without a seam.
    blend = ellipse((PATCH_SIZE / 2, PATCH_SIZE / 2), (36, 36), 0, sharpness=0.25)[..., None]  # (128, 128, 1)
    for x, y, kind in FIGURES:
        patch = render_patch(rng, kind).astype(float)
        top, left = int(np.floor(y + 0.5)) - PATCH_SIZE // 2, int(np.floor(x + 0.5)) - PATCH_SIZE // 2
        paste(rgb, np.concatenate([patch, blend], axis=-1), top=top, left=left, combine=alpha_over)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_roi(path: Path, image: np.ndarray) -> Path:
    """One RGB page, Deflate, 0.25 um/px (SimpleITK reads a spacing of 0.00025 mm), written as the stacks are."""
    return write_stack(path, image)


def points_json() -> dict:
    """FIGURES as a Track 1 container writes its detections: Multiple points in mm (origin 0)."""
    points = [
        {"name": "mitotic figure", "point": [round(x * SPACING_MM, 9), round(y * SPACING_MM, 9), 0.0],
         "probability": probability}
        for (x, y, _), probability in zip(FIGURES, DETECTION_PROBABILITIES)
    ]
    return {"name": "Points of interest", "type": "Multiple points", "points": points, "version": {"major": 1, "minor": 0}}


def write_roi_case(folder: Path, seed: int = 0) -> Path:
    """Write the case: `inputs.json`, the image in `images/histopathology-roi-cropout/`, `mitotic-figures.json`."""
    folder = Path(folder)
    write_roi(folder / ROI_RELATIVE_PATH / platform_file_name(f"roi-{seed}", Path(SAMPLE_NAME).suffix), render_roi(seed))
    (folder / POINTS_FILE).write_text(json.dumps(points_json(), indent=4) + "\n")
    sockets = [
        image_socket(ROI_SLUG, ROI_RELATIVE_PATH, SAMPLE_NAME),
        {
            "file": None,
            "image": None,
            "value": None,
            "interface": {"slug": POINTS_SLUG, "kind": "Multiple points", "super_kind": "File",
                          "relative_path": POINTS_FILE, "example_value": None},
        },
    ]
    (folder / "inputs.json").write_text(json.dumps(sockets, indent=4) + "\n")
    return folder
