"""Synthetic H&E-like sample input for the MIDOG 2025 Track 2 container, drawn procedurally.

The project ships its own sample stack (test/input/) instead of the official one, whose data may not
be redistributed. Each 128x128 page is painted as stain concentrations and turned into RGB by the
Beer-Lambert stain model of colour deconvolution (Ruifrok & Johnston, Anal Quant Cytol Histol 2001):
pink eosin stroma with fibres, pale haematoxylin nuclei with chromatin speckle, and a dark mitotic
figure in the centre: a compact metaphase plate or two anaphase plates ("normal"), or a multipolar
or fragmented cluster ("atypical"). The pictures are not meant to be realistic, only H&E-coloured,
deterministic given the seed, and shaped like the official stacks: one RGB page per patch, Deflate,
0.25 um/px, some pages with the black borders of figures near the edge of their region.

Cases are laid out as grand-challenge lays them out: the image file in the socket folder carries
the platform's own name (a UUID with `.tiff`, or `.mha` for a stack handed over as a 3-D RGB
MetaImage), and inputs.json's `image.name` is the name it was uploaded under. The `hand-named`
layout puts the file under its upload name instead, as users make cases by hand.

Run `python -m training make-sample --all` to write every committed sample case under test/.
"""

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import tifffile

from inference.contract import PATCH_SIZE, STACK_SLUG

SAMPLE_NAME = "stack_sample.tiff"  # the name the sample stack is "uploaded" under
SPACING_MM = 0.00025  # 0.25 um/px
# layout -> (suffix of the file on disk, whether it is named as uploaded rather than by the platform)
LAYOUTS = {"platform": (".tiff", False), "platform-mha": (".mha", False), "hand-named": (".tiff", True)}
KINDS = ("normal", "atypical")
# Optical density of one unit of each stain in R, G, B: the reference H&E vectors that Macenko-style
# stain normalisation uses (pinker eosin than Ruifrok & Johnston's own [0.07, 0.99, 0.11]).
HAEMATOXYLIN_OD = np.array([0.5626, 0.7201, 0.4062])
EOSIN_OD = np.array([0.2159, 0.8012, 0.5581])
# page index -> (side, width in pixels) of the black border that edge crops carry in official stacks
BLACK_BORDERS = {3: ("top", 20), 10: ("left", 35)}


def smooth_noise(rng: np.random.Generator, cells: int, size: int = PATCH_SIZE) -> np.ndarray:
    """Value noise in [-1, 1]: a (cells+1)^2 random grid, bilinearly interpolated to size x size."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    position = np.linspace(0, cells, size, endpoint=False)
    index = position.astype(int)
    fraction = position - index
    fraction = fraction * fraction * (3 - 2 * fraction)  # smoothstep: no creases along the grid lines
    rows = grid[index] * (1 - fraction)[:, None] + grid[index + 1] * fraction[:, None]  # (size, cells+1)
    return rows[:, index] * (1 - fraction) + rows[:, index + 1] * fraction


def box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur of a 2-D array, edges extended."""
    width = 2 * radius + 1
    for axis in (0, 1):
        padded = np.pad(image, [(radius + 1, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        summed = np.cumsum(padded, axis=axis)
        image = (np.take(summed, range(width, summed.shape[axis]), axis=axis)
                 - np.take(summed, range(0, summed.shape[axis] - width), axis=axis)) / width
    return image


def ellipse(centre, axes, angle: float, sharpness: float = 3.0, size: int = PATCH_SIZE) -> np.ndarray:
    """A soft-edged filled ellipse in [0, 1]; `sharpness` is the edge steepness in 1/pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(float)
    u = (x - centre[0]) * np.cos(angle) + (y - centre[1]) * np.sin(angle)
    v = -(x - centre[0]) * np.sin(angle) + (y - centre[1]) * np.cos(angle)
    radius = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)
    return 1.0 / (1.0 + np.exp(-np.clip((1.0 - radius) * min(axes) * sharpness, -30, 30)))


def stroma(rng: np.random.Generator) -> np.ndarray:
    """Eosin concentration of the background: wavy fibres over blotchy staining, with pale clefts."""
    y, x = np.mgrid[0:PATCH_SIZE, 0:PATCH_SIZE].astype(float)
    angle = rng.uniform(0, np.pi)
    warp = 5.0 * smooth_noise(rng, 3)
    fibres = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) / rng.uniform(1.5, 3.0) + warp)
    eosin = 0.55 + 0.22 * fibres * (0.5 + 0.5 * smooth_noise(rng, 10)) + 0.15 * smooth_noise(rng, 4)
    clefts = box_blur(np.clip(smooth_noise(rng, 6) - 0.55, 0, None) * 2.2, 3)
    return np.clip(eosin * (1 - clefts), 0.03, None)


def nuclei(rng: np.random.Generator, count: int) -> np.ndarray:
    """Haematoxylin of interphase nuclei (round tumour nuclei and slim fibroblasts), away from the centre."""
    haematoxylin = np.zeros((PATCH_SIZE, PATCH_SIZE))
    placed = 0
    while placed < count:
        centre = rng.uniform(-6, PATCH_SIZE + 6, 2)
        if np.hypot(*(centre - PATCH_SIZE / 2)) < 32:
            continue
        slim = rng.random() < 0.3
        axes = (rng.uniform(9, 14), rng.uniform(2.5, 4)) if slim else (rng.uniform(7, 11), rng.uniform(5.5, 9))
        angle = rng.uniform(0, np.pi)
        body = ellipse(centre, axes, angle, sharpness=1.2)
        inner = ellipse(centre, (axes[0] - 1.5, axes[1] - 1.5), angle, sharpness=1.2)
        speckle = box_blur(rng.random((PATCH_SIZE, PATCH_SIZE)), 1)
        nucleolus = ellipse(centre + rng.uniform(-2, 2, 2), (1.5, 1.3), 0, sharpness=2.0)
        density = rng.uniform(0.7, 1.0) if slim else rng.uniform(0.5, 0.8)
        chromatin = body * density * (0.55 + 0.9 * speckle) + 0.3 * (body - inner) + 0.5 * nucleolus * (not slim)
        haematoxylin = np.maximum(haematoxylin, chromatin)
        placed += 1
    return haematoxylin


def chromosome_cluster(rng: np.random.Generator, centre, length: float, angle: float, count: int) -> np.ndarray:
    """Small dark chromosome blobs strewn along a segment through `centre`: a plate, bar or arm."""
    figure = np.zeros((PATCH_SIZE, PATCH_SIZE))
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    for _ in range(count):
        along, across = rng.uniform(-0.5, 0.5) * length, rng.normal(0, 1.6)
        point = np.asarray(centre) + along * direction + across * normal
        blob_angle = angle + np.pi / 2 + rng.normal(0, 0.6)  # chromosome arms stick out of the plate
        figure = np.maximum(figure, ellipse(point, (rng.uniform(2.0, 4.0), rng.uniform(1.0, 1.8)), blob_angle))
    return figure


def mitotic_figure(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Chromatin of the centred figure, in [0, 1]: normal plates or atypical multipolar/fragmented clusters."""
    centre = np.array([PATCH_SIZE / 2, PATCH_SIZE / 2]) + rng.normal(0, 2, 2)
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle + np.pi / 2), np.sin(angle + np.pi / 2)])
    style = rng.integers(2)
    if kind == "normal" and style == 0:  # metaphase: one compact plate
        return chromosome_cluster(rng, centre, rng.uniform(20, 30), angle, 40)
    if kind == "normal":  # anaphase: two parallel plates moving apart
        gap = rng.uniform(7, 11)
        return np.maximum(chromosome_cluster(rng, centre + gap * direction, rng.uniform(16, 24), angle, 28),
                          chromosome_cluster(rng, centre - gap * direction, rng.uniform(16, 24), angle, 28))
    figure = np.zeros((PATCH_SIZE, PATCH_SIZE))
    if style == 0:  # multipolar: three or four arms radiating from the centre
        poles = rng.integers(3, 5)
        for pole in range(poles):
            arm_angle = angle + 2 * np.pi * pole / poles + rng.normal(0, 0.25)
            arm_centre = centre + rng.uniform(8, 11) * np.array([np.cos(arm_angle), np.sin(arm_angle)])
            figure = np.maximum(figure, chromosome_cluster(rng, arm_centre, rng.uniform(10, 16),
                                                           arm_angle + np.pi / 2, 14))
        return figure
    for _ in range(rng.integers(6, 11)):  # fragmented: scattered clumps and lagging chromosomes
        offset = rng.normal(0, 9, 2)
        figure = np.maximum(figure, chromosome_cluster(rng, centre + offset, rng.uniform(3, 9),
                                                       rng.uniform(0, np.pi), int(rng.integers(2, 7))))
    return figure


def render_patch(rng: np.random.Generator, kind: str) -> np.ndarray:
    """One H&E-like (128, 128, 3) uint8 patch with a `kind` ("normal" or "atypical") figure in the centre."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    eosin = stroma(rng)
    haematoxylin = 0.1 + 0.05 * smooth_noise(rng, 6) + nuclei(rng, int(rng.integers(7, 13)))
    centre = (PATCH_SIZE / 2 + rng.normal(0, 2), PATCH_SIZE / 2 + rng.normal(0, 2))
    cell = ellipse(centre, (rng.uniform(20, 26), rng.uniform(17, 22)), rng.uniform(0, np.pi), sharpness=0.3)
    eosin = eosin * (1 - 0.55 * cell) + 0.12 * cell  # the dividing cell's pale, clear cytoplasm
    haematoxylin = haematoxylin * (1 - cell)
    figure = box_blur(mitotic_figure(rng, kind), 1)
    haematoxylin = haematoxylin + figure * rng.uniform(1.5, 1.9) * (0.85 + 0.3 * rng.random(figure.shape))
    optical_density = haematoxylin[..., None] * HAEMATOXYLIN_OD + eosin[..., None] * EOSIN_OD  # (H, W, 3)
    rgb = 255.0 * np.exp(-optical_density) + rng.normal(0, 2.5, optical_density.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_stack(n_pages: int = 16, seed: int = 0) -> np.ndarray:
    """(n_pages, 128, 128, 3) uint8: about a third atypical, pages 3 and 10 with black edge borders."""
    rng = np.random.default_rng(seed)
    n_atypical = max(1, round(n_pages / 3)) if n_pages > 1 else 0
    kinds = rng.permutation(["atypical"] * n_atypical + ["normal"] * (n_pages - n_atypical))
    pages = np.stack([render_patch(rng, str(kind)) for kind in kinds])
    for index, (side, width) in BLACK_BORDERS.items():
        if index < n_pages:
            if side == "top":
                pages[index, :width] = 0
            else:
                pages[index, :, :width] = 0
    return pages


def write_stack(path: Path, pages: np.ndarray) -> Path:
    """A multi-page TIFF like the official stacks: one RGB page per patch, Deflate, 0.25 um/px."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path, pages, photometric="rgb", compression=tifffile.COMPRESSION.ADOBE_DEFLATE, metadata=None,
        resolution=(40000, 40000), resolutionunit="CENTIMETER",  # 40,000 px/cm = 0.25 um/px
    )
    return path


def write_stack_mha(path: Path, pages: np.ndarray) -> Path:
    """The stack as a 3-D RGB MetaImage (pages x height x width, vector pixels, compressed), as panimg writes one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(pages, isVector=True)
    image.SetSpacing((SPACING_MM, SPACING_MM, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def platform_file_name(key: str, suffix: str) -> str:
    """A UUID file name like the one grand-challenge gives a socket's image, fixed by `key` (reproducible cases)."""
    return f"{uuid.UUID(bytes=hashlib.sha256(key.encode()).digest()[:16], version=4)}{suffix}"


def image_socket(slug: str, relative_path: str, upload_name: str) -> dict:
    """An image socket of inputs.json as grand-challenge writes it."""
    return {
        "file": None,
        "image": {"name": upload_name},
        "value": None,
        "interface": {"slug": slug, "kind": "Image", "super_kind": "Image", "relative_path": relative_path,
                      "example_value": None},
    }


def write_sample_case(folder: Path, seed: int = 0, n_pages: int = 16, layout: str = "platform") -> Path:
    """Write `folder/inputs.json` and the stack in `folder/images/<slug>/`, laid out as `layout` (LAYOUTS) says."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, not {layout!r}")
    suffix, named_as_uploaded = LAYOUTS[layout]
    folder = Path(folder)
    relative_path = f"images/{STACK_SLUG}"
    upload_name = Path(SAMPLE_NAME).with_suffix(suffix).name
    file_name = upload_name if named_as_uploaded else platform_file_name(f"stack-{seed}-{n_pages}{suffix}", suffix)
    pages = render_stack(n_pages, seed)
    write = write_stack_mha if suffix == ".mha" else write_stack
    write(folder / relative_path / file_name, pages)
    (folder / "inputs.json").write_text(json.dumps([image_socket(STACK_SLUG, relative_path, upload_name)], indent=4)
                                        + "\n")
    return folder
