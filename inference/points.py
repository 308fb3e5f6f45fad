"""The whole-image interface: a region of interest plus candidate points, each point classified.

The points come as grand-challenge "Multiple points" JSON in mm (socket `mitotic-figures`, inline
or as a file, as Track 1 containers write it) or as a CSV of x,y pixels (socket
`candidate-points`). Each point gets a crop cut by crops.py; the answer lists the same points in
the same order, named by class, with P(atypical). docs/interfaces.md has the details.
"""

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from inference import crops
from inference.contract import CSV_SLUG, POINTS_OUTPUT, POINTS_SLUG, POINTS_TYPES, POINTS_VERSION, ROI_SLUG
from inference.errors import InputError, Stopwatch, log, one_line
from inference.images import Geometry, read_roi
from inference.model import BATCH_SIZE, Model, is_number, predict
from inference.sockets import socket_by_slug, socket_image_path, socket_path


def is_finite_number(value: Any) -> bool:
    """A JSON number that a float holds: not NaN, not infinite, not an integer of 400 digits."""
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def points_value(socket: dict[str, Any], *, input_dir: Path) -> tuple[Any, str]:
    """A Multiple points socket's JSON: its inline `value`, else its file; and where it came from."""
    if socket.get("value") is not None:
        return socket["value"], f"inputs.json socket {POINTS_SLUG}"
    path = socket_path(socket, input_dir=input_dir)
    if not path.is_file():
        raise InputError(f"points file not found: {path} (socket {POINTS_SLUG} has no inline value)")
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {one_line(error)}") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON: {error}") from error


def parse_points(value: Any, *, source: str) -> list[list[float]]:
    """The `point` of each entry of a Multiple points object, as given: [x, y, z] in mm."""
    if not isinstance(value, dict):
        raise InputError(f"{source}: a JSON {json_type(value)}, expected a Multiple points object")
    if value.get("type") not in POINTS_TYPES:
        raise InputError(f"{source}: type is {value.get('type')!r}, expected 'Multiple points'")
    if value["type"] != POINTS_TYPES[0]:
        log(f"{source}: type {value['type']!r} (the Track 1 reference's spelling) read as {POINTS_TYPES[0]!r}")
    entries = value.get("points")
    if not isinstance(entries, list):
        raise InputError(f"{source}: 'points' is a JSON {json_type(entries)}, expected an array")
    for index, entry in enumerate(entries):
        point = entry.get("point") if isinstance(entry, dict) else None
        if not (isinstance(point, list) and len(point) == 3
                and all(map(is_finite_number, point))):
            text = one_line(json.dumps(entry))
            raise InputError(f"{source}: points[{index}] is {text if len(text) <= 100 else text[:97] + '...'}, "
                             "expected an object whose 'point' is three numbers [x, y, z] in mm")
    return [entry["point"] for entry in entries]


def read_points_csv(*, path: Path) -> np.ndarray:
    """(N, 2) pixel points (x, y) from a CSV whose header names columns x and y (other columns ignored)."""
    if not path.is_file():
        raise InputError(f"points file not found: {path}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = [(line, row) for line, row in enumerate(csv.reader(handle), start=1) if any(map(str.strip, row))]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read {path}: {one_line(error)}") from error
    header = [cell.strip().lower() for cell in rows[0][1]] if rows else []
    if "x" not in header or "y" not in header:
        raise InputError(f"{path}: the first line must be a header naming columns x and y (pixels: x the column, "
                         f"y the row), found {rows[0][1] if rows else 'an empty file'}")
    columns = header.index("x"), header.index("y")
    points = []
    for line, row in rows[1:]:
        try:
            point = [float(row[column]) for column in columns]
        except (IndexError, ValueError):
            point = []
        if len(point) != 2 or not all(map(math.isfinite, point)):
            raise InputError(f"{path}: line {line} ({','.join(row)}) has no number in column x or y")
        points.append(point)
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def read_candidates(*, sockets: list[dict[str, Any]], input_dir: Path,
                    geometry: Geometry) -> tuple[list[list[float]], np.ndarray]:
    """The candidate points, as the output writes them ([x, y, z] mm) and as (N, 2) pixels of the image."""
    given = [slug for slug in (POINTS_SLUG, CSV_SLUG) if any(s["interface"]["slug"] == slug for s in sockets)]
    if len(given) != 1:
        raise InputError(f"the {ROI_SLUG} image needs one socket of candidate points, {POINTS_SLUG} "
                         f"(Multiple points, mm) or {CSV_SLUG} (CSV of x,y pixels); inputs.json has "
                         f"{' and '.join(given) or 'neither'}")
    socket = socket_by_slug(sockets, given[0])
    if given[0] == POINTS_SLUG:
        value, source = points_value(socket, input_dir=input_dir)
        points_mm = parse_points(value, source=source)
        log(f"{len(points_mm)} points (mm) from {source}")
        pixels = geometry.to_pixels(np.array([point[:2] for point in points_mm], np.float64).reshape(-1, 2))
        return points_mm, pixels
    path = socket_path(socket, input_dir=input_dir)
    pixels = read_points_csv(path=path)
    log(f"{len(pixels)} points (pixels) from {path}")
    return [[float(x), float(y), 0.0] for x, y in geometry.to_mm(pixels)], pixels


def require_inside(points_mm: list[list[float]], pixels: np.ndarray, *, height: int, width: int) -> None:
    """An error naming the first point whose centre pixel is not a pixel of the image."""
    outside = np.flatnonzero(~crops.inside(pixels, height=height, width=width))
    if outside.size:
        first = int(outside[0])
        raise InputError(f"point {first}, {points_mm[first]} mm = pixel ({pixels[first, 0]:.1f}, "
                         f"{pixels[first, 1]:.1f}), lies outside the {width}x{height} image ({outside.size} of "
                         f"{len(pixels)} points lie outside; one near the edge but on the image gets a crop padded "
                         "with black)")


def crop_candidates(image: np.ndarray, pixels: np.ndarray, *, geometry: Geometry, model: Model) -> np.ndarray:
    """One model-sized crop per point, from the image resampled to 0.25 um/px when its spacing is not a 40x one."""
    spacing_um = tuple(float(value) * 1000.0 for value in geometry.spacing)
    resample = crops.needs_resampling(spacing_um)
    low, high = crops.PLAUSIBLE_SPACING_UM
    if resample:
        log(f"spacing {spacing_um[0]:.4g} x {spacing_um[1]:.4g} um/px: resampled to "
            f"{crops.TARGET_SPACING_UM} um/px before cropping")
    elif not all(low <= value <= high for value in spacing_um):
        log(f"spacing {spacing_um[0]:.4g} x {spacing_um[1]:.4g} um/px is no microscope's (none in the file?): "
            "crops cut at the image's own resolution, mm read with that spacing")
    return crops.crop_points(image, pixels, size=(model.height, model.width),
                             spacing_um=spacing_um if resample else None)


def classify_points(*, sockets: list[dict[str, Any]], input_dir: Path, model: Model,
                    stopwatch: Stopwatch) -> dict[str, Any]:
    """Whole image + candidate points: each point, in input order, named by class, with P(atypical)."""
    path = socket_image_path(socket_by_slug(sockets, ROI_SLUG), input_dir=input_dir)
    log(f"input {path}")
    with stopwatch.phase("read"):
        image, geometry = read_roi(path=path)
        points_mm, pixels = read_candidates(sockets=sockets, input_dir=input_dir, geometry=geometry)
    spacing_um = " x ".join(f"{value * 1000:.4g}" for value in geometry.spacing)
    log(f"read a {image.shape[1]}x{image.shape[0]} image at {spacing_um} um/px and {len(pixels)} points, "
        f"{stopwatch.ms('read')}")
    require_inside(points_mm, pixels, height=image.shape[0], width=image.shape[1])
    with stopwatch.phase("infer"):
        patches = crop_candidates(image, pixels, geometry=geometry, model=model)
        probabilities = predict(model, patches) if len(patches) else np.zeros(0, np.float32)
    log(f"crop and infer {len(patches)} points in {-(-len(patches) // BATCH_SIZE)} run(s), {stopwatch.ms('infer')}")
    negative, positive = model.classes
    points = [
        {"name": f"{positive if probability >= model.threshold else negative} mitotic figure",
         "point": point, "probability": probability}
        for point, probability in zip(points_mm, map(float, probabilities))
    ]
    return {POINTS_OUTPUT: {"type": POINTS_TYPES[0], "points": points, "version": POINTS_VERSION}}
