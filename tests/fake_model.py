"""A tiny stand-in model folder in the format of docs/model-format.md, for tests that must not train.

Its graph is a real ONNX graph with the real input/output contract; the "network" is
P(atypical) = sigmoid(10 * mean(pixels) / 255 - 5), so brighter pages score higher: that makes page
order and thresholds checkable without torch.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 18


def fake_probability(patches: np.ndarray) -> np.ndarray:
    """What the fake graph computes, in numpy: patches (N, H, W, 3) uint8 -> (N,) float."""
    mean = patches.astype(np.float64).mean(axis=(1, 2, 3))
    return 1.0 / (1.0 + np.exp(-(10.0 * mean / 255.0 - 5.0)))


def build_fake_graph(height: int = 128, width: int = 128) -> onnx.ModelProto:
    """uint8 [N, H, W, 3] -> float32 [N]."""
    nodes = [
        helper.make_node("Cast", ["patches"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["as_float", "axes"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "bias"], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["p_atypical"]),
    ]
    initialisers = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [10.0 / 255.0]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [5.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_atypical_classifier",
        [helper.make_tensor_value_info("patches", TensorProto.UINT8, ["N", height, width, 3])],
        [helper.make_tensor_value_info("p_atypical", TensorProto.FLOAT, ["N"])],
        initialisers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def write_fake_model(folder: Path, *, threshold: float = 0.5, name: str = "fake") -> Path:
    """Write `<name>.onnx` and `model.json` into `folder`; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(build_fake_graph(), onnx_path)
    spec = {
        "format_version": 1,
        "name": name,
        "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "input": {"name": "patches", "dtype": "uint8", "layout": "NHWC", "height": 128, "width": 128, "channels": 3},
        "output": {"name": "p_atypical"},
        "classes": ["normal", "atypical"],
        "threshold": threshold,
        "threshold_rule": "fixed (test fixture)",
        "tta_views": ["identity"],
        "members": [],
        "training": {"dataset": "none: a test fixture"},
        "metrics": {},
        "provenance": {"created": "test fixture"},
    }
    (folder / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
    return folder


if __name__ == "__main__":
    import sys

    print(write_fake_model(Path(sys.argv[1] if len(sys.argv) > 1 else "build/fake-model")))
