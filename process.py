"""Grand-challenge inference entry point for MIDOG 2025 Track 2: atypical mitotic figure classification.

Follows the Track 2 container contract of the MIDOG 2025 challenge (https://midog2025.deepmicroscopy.org):
`/input/inputs.json` lists the sockets; the `stacked-histopathology-roi-cropouts` socket names one
multi-page image under `/input/images/stacked-histopathology-roi-cropouts/`, one 128x128 RGB crop
around a mitotic figure per page. The answer is `/output/multiple-mitotic-figure-classification.json`:
one `{"class": "normal"|"atypical", "confidence": P(atypical)}` per page, in page order, where
`confidence` is always a JSON float. The model is the ONNX graph + `model.json` of
docs/model-format.md, run with ONNX Runtime (CUDA when present, CPU otherwise).

A second interface takes what a Track 1 detector works on and writes: the whole region of interest
(socket `histopathology-region-of-interest-cropout`, `/input/images/histopathology-roi-cropout/`)
plus candidate points, either grand-challenge "Multiple points" JSON in mm (socket
`mitotic-figures`, inline `value` or `/input/mitotic-figures.json`, as Track 1 containers write
it) or a CSV of `x,y` pixels (socket `candidate-points`, `/input/candidate-points.csv`). Each point
gets a crop cut by crops.py (black beyond the image's edge; resampled to 0.25 um/px first when the
image's spacing is not a 40x one) and the answer is `/output/atypical-mitotic-figures.json`, the
same points in the same order, each named "atypical mitotic figure" or "normal mitotic figure" with
`probability` = P(atypical). A point outside the image is an error. docs/interfaces.md has both.

Pages (and whole images, for their pixel types and channels) are taken as they come, with these
adjustments (each one logged when it happens):

| input                          | what process.py does                                              |
|--------------------------------|-------------------------------------------------------------------|
| 2-D image (a single page)      | one page, N = 1                                                   |
| more than 16 pages             | all pages, run through the model in batches of BATCH_SIZE         |
| greyscale (1 channel)          | the channel is replicated to R, G and B                           |
| grey + alpha (2 channels)      | alpha dropped, grey replicated                                    |
| RGBA (4 channels)              | alpha dropped                                                     |
| uint16                         | round(value / 257): the inverse of the usual 8->16 bit v * 257    |
| other integer types            | kept when every value lies in [0, 255], else an error             |
| float                          | round(value * 255) when every value lies in [0, 1], else an error |
| pages larger than the model    | centre crop, per axis                                             |
| pages smaller than the model   | centre pad with black, per axis, like the official edge crops     |

Run locally as `python process.py --input DIR --output DIR [--model DIR]`. Everything a user can get
wrong ends in one line `error: ...` on stderr, exit code 1, and no output file.
"""

import argparse
import atexit
import contextlib
import csv
import ctypes
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import SimpleITK as sitk

import crops
import image_checks

INPUT_PATH = Path("/input")
OUTPUT_PATH = Path("/output")
MODEL_PATHS = (Path("/opt/ml/model"), Path(__file__).parent / "model")

STACK_SLUG = "stacked-histopathology-roi-cropouts"
STACK_OUTPUT = "multiple-mitotic-figure-classification.json"
ROI_SLUG = "histopathology-region-of-interest-cropout"  # Track 1's input image
POINTS_SLUG = "mitotic-figures"  # Track 1's output: Multiple points in mm
CSV_SLUG = "candidate-points"  # this project's own: a CSV of x,y pixels
POINTS_OUTPUT = "atypical-mitotic-figures.json"
# Where a socket's file lies under /input when inputs.json gives no relative_path (grand-challenge's own).
RELATIVE_PATHS = {
    STACK_SLUG: f"images/{STACK_SLUG}",
    ROI_SLUG: "images/histopathology-roi-cropout",
    POINTS_SLUG: "mitotic-figures.json",
    CSV_SLUG: "candidate-points.csv",
}
# The second spelling is what the official Track 1 reference container writes.
POINTS_TYPES = ("Multiple points", "Mulitple points")
POINTS_VERSION = {"major": 1, "minor": 0}
IMAGE_SUFFIXES = (".tif", ".tiff", ".mha")
MAX_LISTED = 10  # file names an error message lists at most
BATCH_SIZE = 64  # pages per session.run: bounds activation memory for long stacks
MODEL_FORMAT_VERSION = 1
# The Track 2 contract: the stack output's "confidence" is P(atypical) whatever the class, as the
# organisers' evaluator reads it (since its commit of 2025-07-27) and their reference container
# writes it. A model.json may say so ("confidence": "p_atypical"); it may not ask for anything else.
CONFIDENCE = "p_atypical"
CLASSES = ("normal", "atypical")  # (negative, positive): the only classes the evaluator accepts


class InputError(Exception):
    """A problem the user can fix: input, model folder, or what the model returned."""


@dataclass(frozen=True)
class Model:
    """An ONNX Runtime session and what model.json says about its input and output."""

    name: str
    session: ort.InferenceSession
    input_name: str
    output_name: str
    height: int
    width: int
    classes: tuple[str, str]
    threshold: float

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]


def log(message: str) -> None:
    """One short progress line on stderr."""
    print(f"process: {message}", file=sys.stderr, flush=True)


class Stopwatch:
    """Wall-clock seconds of each phase of one case, for the log lines and for `--timings`."""

    def __init__(self) -> None:
        self.started_at = time.time()  # Unix time, comparable with a clock outside this process
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    def ms(self, name: str) -> str:
        return f"{self.seconds[name] * 1000:.0f} ms"

    def summary(self) -> str:
        """One JSON object: seconds per phase, and the Unix times main() started and ended."""
        return json.dumps({"started_at": self.started_at, **self.seconds, "ended_at": time.time()})


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# inputs.json and sockets


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside `folder` (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def stand_in_sockets(*, input_dir: Path) -> list[dict[str, Any]]:
    """The sockets inputs.json would list for a folder without one: its only image, with any points file."""
    stack_folder, roi_folder = input_dir / RELATIVE_PATHS[STACK_SLUG], input_dir / RELATIVE_PATHS[ROI_SLUG]
    stacks, rois = list_images(stack_folder), list_images(roi_folder)
    if len(stacks) + len(rois) != 1:
        raise InputError(f"{input_dir / 'inputs.json'} not found, and {stack_folder} holds {len(stacks)} images, "
                         f"{roi_folder} {len(rois)} images (need exactly one in all to go on without inputs.json)")
    slug, image = (STACK_SLUG, stacks[0]) if stacks else (ROI_SLUG, rois[0])
    log(f"no inputs.json; using the only image, {image}")
    sockets = [{"interface": {"slug": slug, "relative_path": RELATIVE_PATHS[slug]}, "image": {"name": image.name}}]
    if slug == ROI_SLUG:
        sockets += [{"interface": {"slug": points_slug, "relative_path": RELATIVE_PATHS[points_slug]}}
                    for points_slug in (POINTS_SLUG, CSV_SLUG) if (input_dir / RELATIVE_PATHS[points_slug]).is_file()]
    return sockets


def read_sockets(*, input_dir: Path) -> list[dict[str, Any]]:
    """The socket list of `<input_dir>/inputs.json`, or a stand-in when only one image lies there."""
    inputs_json = input_dir / "inputs.json"
    if not inputs_json.is_file():
        return stand_in_sockets(input_dir=input_dir)
    try:
        sockets = json.loads(inputs_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {inputs_json}: {error}") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{inputs_json} is not valid JSON: {error}") from error
    if not isinstance(sockets, list) or not all(
        isinstance(socket, dict) and isinstance(socket.get("interface"), dict)
        and isinstance(socket["interface"].get("slug"), str)
        for socket in sockets
    ):
        raise InputError(f"{inputs_json} is not a list of sockets (objects with interface.slug)")
    return sockets


def select_handler(sockets: list[dict[str, Any]]) -> "Handler":
    """The handler of the first socket whose slug this algorithm knows."""
    slugs = [socket["interface"]["slug"] for socket in sockets]
    for slug in slugs:
        if slug in SOCKET_HANDLERS:
            return SOCKET_HANDLERS[slug]
    raise InputError(f"inputs.json has no socket this algorithm reads: found slugs {slugs}, "
                     f"expected one of {sorted(SOCKET_HANDLERS)}")


def socket_by_slug(sockets: list[dict[str, Any]], slug: str) -> dict[str, Any]:
    return next(socket for socket in sockets if socket["interface"]["slug"] == slug)


def socket_path(socket: dict[str, Any], *, input_dir: Path) -> Path:
    """`<input_dir>/<relative_path>` of a socket (grand-challenge's default when absent), kept inside input_dir."""
    interface = socket["interface"]
    relative_path = Path(interface.get("relative_path") or RELATIVE_PATHS.get(interface["slug"], interface["slug"]))
    if relative_path.is_absolute() or ".." in relative_path.parts:
        raise InputError(f"inputs.json: socket {interface['slug']} has an unsafe relative_path {relative_path}")
    return input_dir / relative_path


def uploaded_name(socket: dict[str, Any]) -> str | None:
    """inputs.json's image.name: the name the image had when it was uploaded (None when absent)."""
    image = socket.get("image")
    name = image.get("name") if isinstance(image, dict) else None
    return name if isinstance(name, str) and name != "" else None


def is_plain_file_name(name: str) -> bool:
    """A name that, joined to a folder, stays directly inside it."""
    return Path(name).name == name and name not in (".", "..")


def socket_image_path(socket: dict[str, Any], *, input_dir: Path) -> Path:
    """The image file of an image socket: `<input_dir>/<relative_path>/`'s one image, whatever its name.

    On grand-challenge that file carries the platform's own name (a UUID, `.tif`/`.tiff` or `.mha`)
    and inputs.json's image.name is the name it was uploaded under, which the evaluator uses to find
    the ground truth. A file called image.name is used when the folder holds one (cases made by
    hand); otherwise the name is only logged. Only files directly in the folder are considered.
    """
    slug = socket["interface"]["slug"]
    folder = socket_path(socket, input_dir=input_dir)
    name = uploaded_name(socket)
    if name is not None and is_plain_file_name(name) and (folder / name).is_file():
        return folder / name
    images = list_images(folder)
    if len(images) == 1:
        if name is not None:
            log(f"socket {slug}: uploaded as {name!r}, on disk as {images[0].name}")
        return images[0]
    named = f"inputs.json's image.name: {name!r}" if name is not None else "inputs.json names no image"
    if not images:
        missing = ", which does not exist" if not folder.is_dir() else ""
        raise InputError(f"no image file ({', '.join(IMAGE_SUFFIXES)}) for socket {slug} in {folder}{missing} "
                         f"({named})")
    listed = ", ".join(image.name for image in images[:MAX_LISTED]) + (", ..." if len(images) > MAX_LISTED else "")
    raise InputError(f"{folder} holds {len(images)} image files for socket {slug} ({listed}) and none of them "
                     f"is the named one ({named}); expected the socket's one image")


# ---------------------------------------------------------------------------------------------
# model folder


def find_model_dir(candidates: Sequence[Path]) -> Path:
    """The first candidate folder holding a model.json; an empty or absent one is skipped.

    Grand-challenge extracts an uploaded model tarball into /opt/ml/model/ and leaves that folder
    empty when none was uploaded. A folder with files but no model.json is an upload gone wrong
    (most often a tarball of the model folder rather than of its files), never a reason to fall back
    to the model baked into the image.
    """
    for folder in candidates:
        if (folder / "model.json").is_file():
            return folder
        if folder.is_dir() and any(folder.iterdir()):
            nested = sorted(folder.glob("*/model.json"))
            hint = (f": it lies one folder down, at {nested[0]} (pack the files of the model folder, not the folder: "
                    "./build.sh --save writes such a tarball)") if nested else ""
            raise InputError(f"{folder} holds files but no model.json{hint}")
    raise InputError(f"no model.json in {' or '.join(str(folder) for folder in candidates)}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_model_spec(model_json: Path) -> dict[str, Any]:
    """model.json, checked for the keys this script relies on (the end of docs/model-format.md)."""
    try:
        spec = json.loads(model_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {model_json}: {one_line(error)}") from error
    if not isinstance(spec, dict):
        raise InputError(f"{model_json} is not a JSON object")
    version = spec.get("format_version")
    if not is_number(version) or version != MODEL_FORMAT_VERSION:
        raise InputError(f"{model_json}: format_version is {version!r}, this script reads {MODEL_FORMAT_VERSION}")
    checks = {
        "onnx": lambda value: isinstance(value, str) and value != "" and Path(value).name == value,
        "onnx_sha256": lambda value: isinstance(value, str) and len(value) == 64,
        "input.name": lambda value: isinstance(value, str) and value != "",
        "input.height": lambda value: isinstance(value, int) and not isinstance(value, bool) and value > 0,
        "input.width": lambda value: isinstance(value, int) and not isinstance(value, bool) and value > 0,
        "output.name": lambda value: isinstance(value, str) and value != "",
        "classes": lambda value: isinstance(value, list) and len(value) == 2 and all(isinstance(c, str) for c in value),
        "threshold": lambda value: is_number(value) and 0.0 <= value <= 1.0,
    }
    for key, is_valid in checks.items():
        value: Any = spec
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise InputError(f"{model_json}: missing key {key}")
        if not is_valid(value):
            raise InputError(f"{model_json}: invalid value for {key}: {value!r}")
    return spec


def check_contract(spec: dict[str, Any], *, model_json: Path) -> None:
    """Refuse a model.json whose classes or confidence would break the Track 2 output contract."""
    if tuple(spec["classes"]) != CLASSES:
        raise InputError(f"{model_json}: classes are {spec['classes']}; the Track 2 evaluator accepts exactly "
                         f"{list(CLASSES)} (negative first)")
    if spec.get("confidence", CONFIDENCE) != CONFIDENCE:
        raise InputError(f"{model_json}: confidence is {spec['confidence']!r}; the Track 2 output's confidence is "
                         f"P(atypical) whatever the class, so the only value is {CONFIDENCE!r}")


def stack_entry(probability: float, model: Model) -> dict[str, Any]:
    """One page's output: its class by the threshold, and P(atypical) as its confidence."""
    negative, positive = model.classes
    return {"class": positive if probability >= model.threshold else negative, "confidence": float(probability)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def available_cpus() -> int:
    """CPUs this process may run on (a container's CPU set, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def nvidia_driver_loads() -> bool:
    """Whether the NVIDIA driver's CUDA library can be loaded (a GPU is passed into this container)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Full graph optimisation, one intra-op thread per available CPU (benchmarks/ times these settings)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or available_cpus()
    return options


def create_session(onnx_path: Path) -> ort.InferenceSession:
    """An ONNX Runtime session on CUDA when a GPU and this onnxruntime build allow it, else on the CPU.

    A CUDA session that cannot be created (a driver too old for the CUDA 13 libraries, say) falls
    back to the CPU with a log line rather than failing the case.
    """
    options = session_options()
    cpu_only = ["CPUExecutionProvider"]
    try:
        if "CUDAExecutionProvider" in ort.get_available_providers() and nvidia_driver_loads():
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()  # finds the CUDA/cuDNN libraries that pip installed next to onnxruntime
            try:
                return ort.InferenceSession(str(onnx_path), sess_options=options,
                                            providers=["CUDAExecutionProvider", *cpu_only])
            except Exception as error:  # onnxruntime raises its own Exception subclasses
                log(f"CUDA session failed ({one_line(error)}); using the CPU")
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=cpu_only)
    except Exception as error:  # onnxruntime raises its own Exception subclasses (Fail, InvalidProtobuf, ...)
        raise InputError(f"cannot load {onnx_path}: {one_line(error)}") from error


def load_model(*, model_dir: Path) -> Model:
    """Read model.json, check the graph's sha256, and open an ONNX Runtime session on it."""
    spec = read_model_spec(model_dir / "model.json")
    check_contract(spec, model_json=model_dir / "model.json")
    onnx_path = model_dir / spec["onnx"]
    if not onnx_path.is_file():
        raise InputError(f"model file not found: {onnx_path} (named by {model_dir / 'model.json'})")
    actual_sha256 = sha256_of(onnx_path)
    if actual_sha256 != spec["onnx_sha256"].lower():
        raise InputError(f"{onnx_path}: sha256 {actual_sha256} does not match onnx_sha256 "
                         f"{spec['onnx_sha256']} in model.json (corrupted or swapped model)")
    session = create_session(onnx_path)
    graph_inputs = [node.name for node in session.get_inputs()]
    graph_outputs = [node.name for node in session.get_outputs()]
    if spec["input"]["name"] not in graph_inputs or spec["output"]["name"] not in graph_outputs:
        raise InputError(f"{onnx_path} has inputs {graph_inputs} and outputs {graph_outputs}; model.json "
                         f"expects input {spec['input']['name']!r} and output {spec['output']['name']!r}")
    return Model(
        name=str(spec.get("name") or onnx_path.stem),
        session=session,
        input_name=spec["input"]["name"],
        output_name=spec["output"]["name"],
        height=spec["input"]["height"],
        width=spec["input"]["width"],
        classes=tuple(spec["classes"]),
        threshold=float(spec["threshold"]),
    )


# ---------------------------------------------------------------------------------------------
# image stack


def sitk_reason(error: RuntimeError) -> str:
    """The useful last line of a SimpleITK exception, without its source-file preamble."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    for marker in ("sitk::ERROR: ", "ERROR: "):
        if marker in reason:
            reason = reason.split(marker, 1)[1]
            break
    return re.sub(r"^\w+\(0x[0-9a-f]+\): ", "", reason)  # "TIFFImageIO(0x55d0...): " says nothing


def to_uint8(pages: np.ndarray, *, path: Path) -> np.ndarray:
    """Pixel values as uint8, by the rules in the module docstring."""
    if pages.dtype == np.uint8:
        return pages
    if pages.dtype == np.uint16:
        log("uint16 pixels rescaled to uint8 (round(v / 257))")
        return np.rint(pages.astype(np.float32) / np.float32(257.0)).astype(np.uint8)
    is_integer, is_float = np.issubdtype(pages.dtype, np.integer), np.issubdtype(pages.dtype, np.floating)
    if not (is_integer or is_float):
        raise InputError(f"{path}: unsupported pixel type {pages.dtype}")
    if is_float and not np.isfinite(pages).all():
        raise InputError(f"{path}: NaN or infinite pixel values")
    low, high = pages.min(), pages.max()
    if is_integer and 0 <= low and high <= 255:
        log(f"{pages.dtype} pixels within [0, 255] taken as uint8")
        return pages.astype(np.uint8)
    if is_float and 0.0 <= low and high <= 1.0:
        log(f"{pages.dtype} pixels within [0, 1] rescaled to uint8 (round(v * 255))")
        return np.rint(pages * 255.0).astype(np.uint8)
    expected = "[0, 255]" if is_integer else "[0, 1]"
    raise InputError(f"{path}: {pages.dtype} pixel values span [{low}, {high}], expected {expected} "
                     f"(or uint8 / uint16)")


def to_rgb(pages: np.ndarray, *, path: Path) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W, 3): grey replicated, alpha dropped."""
    channels = pages.shape[-1]
    if channels == 3:
        return pages
    if channels in (1, 2):
        log("greyscale pages replicated to RGB" + (", alpha dropped" if channels == 2 else ""))
        return np.repeat(pages[..., :1], 3, axis=-1)
    if channels == 4:
        log("RGBA pages: alpha dropped")
        return np.ascontiguousarray(pages[..., :3])
    raise InputError(f"{path}: {channels} channels per pixel; expected 1 (grey), 3 (RGB) or 4 (RGBA)")


def expected_pages(path: Path) -> int | None:
    """The pages `path` holds by its structure (image_checks), its damage as an InputError."""
    try:
        return image_checks.expected_pages(path)
    except image_checks.DamagedImage as error:
        raise InputError(f"damaged image {path}: {error}") from error
    except OSError as error:
        raise InputError(f"cannot read image {path}: {error.strerror}") from error


def read_stack(*, path: Path) -> np.ndarray:
    """Every page of a stack as (N, H, W, 3) uint8, in page order; all the pages the file holds, or an error."""
    expected = expected_pages(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read image {path}: {sitk_reason(error)}") from error
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path}: a {image.GetDimension()}-D image; expected pages of a 2-D or 3-D stack")
    pages = sitk.GetArrayFromImage(image)  # (N, H, W[, C]) or (H, W[, C]) for a single page
    if image.GetDimension() == 2:
        pages = pages[np.newaxis]
    if pages.ndim == 3:
        pages = pages[..., np.newaxis]
    if pages.size == 0:
        raise InputError(f"{path}: the image has no pages (shape {pages.shape[:3]})")
    if expected is not None and len(pages) != expected:
        raise InputError(f"damaged image {path}: {len(pages)} pages decoded of the {expected} it holds "
                         "(an answer for fewer pages would fail the whole evaluation)")
    return to_rgb(to_uint8(pages, path=path), path=path)


def fit_pages(pages: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Centre-crop each axis that is too large and centre-pad with black each that is too small."""
    if pages.shape[1:3] != (height, width):
        log(f"pages of {pages.shape[1]}x{pages.shape[2]} centre-cropped/padded to {height}x{width}")
    return crops.fit_centred(pages, height=height, width=width)


# ---------------------------------------------------------------------------------------------
# whole image and candidate points


@dataclass(frozen=True)
class Geometry:
    """Where a 2-D image's pixels lie in physical space, as SimpleITK reads it (mm, x before y)."""

    spacing: np.ndarray  # (2,) mm per pixel
    origin: np.ndarray  # (2,) the centre of pixel (0, 0)
    direction: np.ndarray  # (2, 2) the axes' directions, identity for TIFF

    def to_pixels(self, points_mm: np.ndarray) -> np.ndarray:
        """(N, 2) physical (x, y) -> (N, 2) continuous pixel (x, y): (mm - origin) / spacing, direction undone."""
        return np.linalg.solve(self.direction, (points_mm - self.origin).T).T / self.spacing

    def to_mm(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) continuous pixel (x, y) -> (N, 2) physical (x, y): the inverse of to_pixels."""
        return self.origin + (pixels * self.spacing) @ self.direction.T


def read_roi(*, path: Path) -> tuple[np.ndarray, Geometry]:
    """A whole region-of-interest image as (H, W, 3) uint8, and where its pixels lie."""
    expected = expected_pages(path)
    if expected not in (None, 1):
        raise InputError(f"{path}: a stack of {expected} pages; expected one 2-D region of interest")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read image {path}: {sitk_reason(error)}") from error
    dimension, size = image.GetDimension(), image.GetSize()
    if not (dimension == 2 or (dimension == 3 and size[2] == 1)):
        raise InputError(f"{path}: a {dimension}-D image of size {size}; expected one 2-D region of interest")
    pixels = sitk.GetArrayFromImage(image).reshape(size[1], size[0], -1)  # (H, W, C)
    if pixels.size == 0:
        raise InputError(f"{path}: the image is empty (size {size})")
    direction = np.array(image.GetDirection()).reshape(dimension, dimension)[:2, :2]
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{path}: its direction matrix {image.GetDirection()} does not span the image plane")
    geometry = Geometry(spacing=np.array(image.GetSpacing()[:2]), origin=np.array(image.GetOrigin()[:2]),
                        direction=direction)
    return to_rgb(to_uint8(pixels[np.newaxis], path=path), path=path)[0], geometry


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


def cut_patches(image: np.ndarray, pixels: np.ndarray, *, geometry: Geometry, model: Model) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# inference and output


def predict(model: Model, pages: np.ndarray) -> np.ndarray:
    """P(atypical) per page, (N, H, W, 3) uint8 -> (N,) float32, at most BATCH_SIZE pages per run."""
    probabilities = []
    for start in range(0, len(pages), BATCH_SIZE):
        batch = np.ascontiguousarray(pages[start:start + BATCH_SIZE])
        try:
            (output,) = model.session.run([model.output_name], {model.input_name: batch})
        except Exception as error:  # onnxruntime's own exception types
            raise InputError(f"model {model.name} failed on pages {start}..{start + len(batch) - 1}: "
                             f"{one_line(error)}") from error
        output = np.asarray(output, dtype=np.float32)
        if output.size != len(batch):
            raise InputError(f"model {model.name} returned shape {output.shape} for {len(batch)} pages")
        probabilities.append(output.reshape(-1))
    probabilities = np.concatenate(probabilities)
    bad = np.flatnonzero(~np.isfinite(probabilities) | (probabilities < 0) | (probabilities > 1))
    if bad.size:
        raise InputError(f"model {model.name} returned {probabilities[bad[0]]} for page {bad[0]} "
                         f"({bad.size} pages outside [0, 1] or NaN)")
    return probabilities


def classify_stack(*, sockets: list[dict[str, Any]], input_dir: Path, model: Model,
                   stopwatch: Stopwatch) -> dict[str, Any]:
    """Track 2: one class + confidence (P(atypical) by default) per page of the stacked cropouts."""
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
        patches = cut_patches(image, pixels, geometry=geometry, model=model)
        probabilities = predict(model, patches) if len(patches) else np.zeros(0, np.float32)
    log(f"crop and infer {len(patches)} points in {-(-len(patches) // BATCH_SIZE)} run(s), {stopwatch.ms('infer')}")
    negative, positive = model.classes
    points = [
        {"name": f"{positive if probability >= model.threshold else negative} mitotic figure",
         "point": point, "probability": probability}
        for point, probability in zip(points_mm, map(float, probabilities))
    ]
    return {POINTS_OUTPUT: {"type": POINTS_TYPES[0], "points": points, "version": POINTS_VERSION}}


Handler = Callable[..., dict[str, Any]]
# slug -> handler(sockets=, input_dir=, model=, stopwatch=) returning {output file name: JSON payload}. The points
# interface is keyed by its image; the handler finds the points socket beside it.
SOCKET_HANDLERS: dict[str, Handler] = {STACK_SLUG: classify_stack, ROI_SLUG: classify_points}


def write_json(*, path: Path, payload: Any) -> None:
    """Write JSON atomically: a temp file in the same folder, fsync, then os.replace onto `path`."""
    text = json.dumps(payload, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror}") from error
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp makes 0600; the platform may read as another user
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        if isinstance(error, OSError):
            raise InputError(f"cannot write {path}: {error.strerror}") from error
        raise


def run(*, input_dir: Path, output_dir: Path, model_dirs: Sequence[Path], stopwatch: Stopwatch) -> None:
    """One case: read the sockets, load the model, run the socket's handler, write its outputs."""
    sockets = read_sockets(input_dir=input_dir)
    handler = select_handler(sockets)
    with stopwatch.phase("load"):
        model_dir = find_model_dir(model_dirs)
        model = load_model(model_dir=model_dir)
    log(f"model {model.name} from {model_dir}, provider {model.provider}, load {stopwatch.ms('load')}")
    outputs = handler(sockets=sockets, input_dir=input_dir, model=model, stopwatch=stopwatch)
    with stopwatch.phase("write"):
        for name, payload in outputs.items():
            write_json(path=output_dir / name, payload=payload)
    log(f"write {', '.join(str(output_dir / name) for name in outputs)}, {stopwatch.ms('write')}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=INPUT_PATH, help=f"input folder (default {INPUT_PATH})")
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH, help=f"output folder (default {OUTPUT_PATH})")
    parser.add_argument("--model", type=Path, default=None,
                        help=f"model folder (default: the first of {', '.join(map(str, MODEL_PATHS))} "
                             "holding a model.json)")
    parser.add_argument("--timings", action="store_true",
                        help="end with one line 'process: timings {...}' on stderr: seconds per phase (load, read, "
                             "infer, write) and the Unix times main() started and ended (benchmarks/startup.py)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    stopwatch = Stopwatch()
    args = parse_args(argv)
    model_dirs = (args.model,) if args.model is not None else MODEL_PATHS
    try:
        run(input_dir=args.input, output_dir=args.output, model_dirs=model_dirs, stopwatch=stopwatch)
    except InputError as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return 1
    if args.timings:
        log(f"timings {stopwatch.summary()}")
    return 0


def exit_at_once(exit_code: int) -> None:
    """End the process now: flush stdout and stderr, then os._exit, without the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


if __name__ == "__main__":
    exit_code = main()
    # The outputs are written and fsynced: the interpreter's teardown (mostly SimpleITK's module
    # cleanup) would only hold the platform up, ~35 ms of a ~0.4 s stack. Done at exit rather than
    # here, so that code running this file as __main__ in-process (runpy) still reaches its end first.
    atexit.register(exit_at_once, exit_code)
    raise SystemExit(exit_code)
