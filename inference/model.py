"""The model folder (an ONNX graph + model.json, docs/model-format.md) and its ONNX Runtime session.

The session runs on CUDA when a GPU and this onnxruntime build allow it, else on the CPU; a CUDA
session that cannot be created falls back to the CPU with a log line rather than failing the case.
"""

import ctypes
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inference.contract import CLASSES, CONFIDENCE
from inference.errors import InputError, log, one_line


BATCH_SIZE = 64  # pages per session.run: bounds activation memory for long stacks
MODEL_FORMAT_VERSION = 1


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
    if "onnx_data" in spec:  # a graph over 2 GB keeps its weights in one external data file beside it
        if not checks["onnx"](spec["onnx_data"]) or not checks["onnx_sha256"](spec.get("onnx_data_sha256")):
            raise InputError(f"{model_json}: onnx_data needs a plain file name and its onnx_data_sha256")
    return spec


def _check_digest(path: Path, wanted: str, key: str, model_json: Path) -> None:
    if not path.is_file():
        raise InputError(f"model file not found: {path} (named by {model_json})")
    actual = sha256_of(path)
    if actual != wanted.lower():
        raise InputError(f"{path}: sha256 {actual} does not match {key} {wanted} in model.json "
                         f"(corrupted or swapped model)")


def check_contract(spec: dict[str, Any], *, model_json: Path) -> None:
    """Refuse a model.json whose classes or confidence would break the Track 2 output contract."""
    if tuple(spec["classes"]) != CLASSES:
        raise InputError(f"{model_json}: classes are {spec['classes']}; the Track 2 evaluator accepts exactly "
                         f"{list(CLASSES)} (negative first)")
    if spec.get("confidence", CONFIDENCE) != CONFIDENCE:
        raise InputError(f"{model_json}: confidence is {spec['confidence']!r}; the Track 2 output's confidence is "
                         f"P(atypical) whatever the class, so the only value is {CONFIDENCE!r}")


def sha256_of(*paths: Path) -> str:
    """Hex sha256 of the files' bytes, one after the other (the project's one file hash; read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as handle:
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

    A CUDA session that cannot be created (a driver too old for the CUDA 12 libraries, say) falls
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
    _check_digest(onnx_path, spec["onnx_sha256"], "onnx_sha256", model_dir / "model.json")
    if "onnx_data" in spec:
        _check_digest(model_dir / spec["onnx_data"], spec["onnx_data_sha256"], "onnx_data_sha256",
                      model_dir / "model.json")
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
