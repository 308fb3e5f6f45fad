"""Tests of process.py, the grand-challenge entry point: output contract, input handling, errors.

End-to-end tests run `python process.py --input --output --model` in a subprocess, as a user or the
container does; unit tests import its functions. The model is tests/fake_model.py's graph, whose
P(atypical) is a known function of the mean pixel value, so every confidence is checkable.
"""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
from onnx import numpy_helper

import inference.errors
import inference.images
import inference.model
import inference.output
import process
from scripts.compare_outputs import contract_problems
from tests.conftest import STACK_SLUG, only_file, platform_file_name, stack_socket, write_image
from tests.fake_model import build_fake_graph, fake_probability, write_fake_model

REPO = Path(__file__).resolve().parents[1]
OUTPUT_NAME = "multiple-mitotic-figure-classification.json"


def run_process(input_dir: Path, output_dir: Path, model_dir: Path | None,
                *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "process.py"), "--input", str(input_dir), "--output", str(output_dir),
               *options]
    if model_dir is not None:
        command += ["--model", str(model_dir)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def read_results(result: subprocess.CompletedProcess, output_dir: Path) -> list[dict]:
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == [OUTPUT_NAME]
    return json.loads((output_dir / OUTPUT_NAME).read_text())


def confidences(results: list[dict]) -> np.ndarray:
    return np.array([item["confidence"] for item in results])


def assert_failed(result: subprocess.CompletedProcess, output_dir: Path, mentions: str) -> None:
    """Non-zero exit, one `error:` line naming the culprit, no traceback, and nothing in the output dir."""
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert mentions in error_lines[0], error_lines[0]
    assert "Traceback" not in result.stderr
    assert not output_dir.exists() or list(output_dir.iterdir()) == []


def stack_file(input_dir: Path) -> Path:
    """The one image of a case's stack socket folder."""
    return only_file(input_dir / "images" / STACK_SLUG)


def rewrite_graph(model_dir: Path, **initialisers: float) -> Path:
    """Replace scalar initialisers (scale, bias) of the fake graph in `model_dir` and fix its sha256."""
    graph = build_fake_graph()
    for tensor in graph.graph.initializer:
        if tensor.name in initialisers:
            tensor.CopyFrom(numpy_helper.from_array(np.array(initialisers[tensor.name], np.float32), tensor.name))
    onnx_path = model_dir / "fake.onnx"
    onnx.save(graph, onnx_path)
    spec = json.loads((model_dir / "model.json").read_text())
    spec["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    (model_dir / "model.json").write_text(json.dumps(spec))
    return model_dir


def brightness_pages(values, size=(128, 128)) -> np.ndarray:
    """One page per value: uniform grey level plus a little seeded noise, RGB uint8."""
    rng = np.random.default_rng(0)
    pages = np.array([np.full((*size, 3), value, np.int16) for value in values])
    return np.clip(pages + rng.integers(-8, 9, pages.shape), 0, 255).astype(np.uint8)


def gradient_pages(count: int, height: int, width: int) -> np.ndarray:
    """Pages whose mean depends strongly on which window is cut from them (checks crop offsets)."""
    rows = np.linspace(0, 255, height)[:, None]
    columns = np.linspace(0, 200, width)[None, :]
    page = (rows * 0.6 + columns * 0.4).astype(np.uint8)
    pages = np.stack([np.roll(page, shift, axis=1) for shift in range(count)])
    return np.repeat(pages[..., None], 3, axis=-1)


# ---------------------------------------------------------------------------------------------
# output contract


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_output_contract(make_case, tmp_path, threshold):
    pages = brightness_pages(np.linspace(40, 220, 16).astype(int))
    model_dir = write_fake_model(tmp_path / "model", threshold=threshold)
    output_dir = tmp_path / "nested" / "output"  # does not exist yet: process.py creates it
    result = run_process(make_case(pages), output_dir, model_dir)
    results = read_results(result, output_dir)

    assert isinstance(results, list) and len(results) == len(pages)
    expected = fake_probability(pages)
    for item, probability in zip(results, expected):
        assert set(item) == {"class", "confidence"}
        assert type(item["confidence"]) is float
        assert item["class"] in {"normal", "atypical"}
        assert item["confidence"] == pytest.approx(probability, abs=1e-6)
        assert item["class"] == ("atypical" if item["confidence"] >= threshold else "normal")
    assert {item["class"] for item in results} == {"normal", "atypical"}  # both sides of the threshold
    raw = (output_dir / OUTPUT_NAME).read_text()
    assert not re.search(r'"confidence":\s*-?\d+\s*[,}\n]', raw), "a confidence written as a JSON integer"
    assert all(line.startswith("process: ") for line in result.stderr.splitlines()), result.stderr
    assert "provider CPUExecutionProvider" in result.stderr


def test_saturated_confidences_are_json_floats(make_case, tmp_path):
    model_dir = rewrite_graph(write_fake_model(tmp_path / "model"), scale=1e4, bias=5e5)
    pages = np.stack([np.zeros((128, 128, 3), np.uint8), np.full((128, 128, 3), 255, np.uint8)])
    output_dir = tmp_path / "output"
    results = read_results(run_process(make_case(pages), output_dir, model_dir), output_dir)
    assert [item["confidence"] for item in results] == [0.0, 1.0]
    assert [item["class"] for item in results] == ["normal", "atypical"]
    raw = (output_dir / OUTPUT_NAME).read_text()
    assert '"confidence": 0.0' in raw and '"confidence": 1.0' in raw


def test_page_order(make_case, fake_model_dir, tmp_path):
    pages = brightness_pages(range(20, 240, 14))
    output_dir = tmp_path / "output"
    values = confidences(read_results(run_process(make_case(pages), output_dir, fake_model_dir), output_dir))
    assert np.all(np.diff(values) > 0)
    np.testing.assert_allclose(values, fake_probability(pages), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# inputs that are handled


def check_probabilities(input_dir: Path, model_dir: Path, tmp_path: Path, expected_pages: np.ndarray) -> str:
    output_dir = tmp_path / "output"
    result = run_process(input_dir, output_dir, model_dir)
    values = confidences(read_results(result, output_dir))
    assert len(values) == len(expected_pages)
    np.testing.assert_allclose(values, fake_probability(expected_pages), atol=1e-6)
    return result.stderr


@pytest.mark.parametrize("name", ["stack.tif", "stack.tiff", "stack.mha"])
def test_file_types(make_case, fake_model_dir, tmp_path, name):
    pages = brightness_pages([30, 120, 200, 90])
    check_probabilities(make_case(pages, name=name), fake_model_dir, tmp_path, pages)


@pytest.mark.parametrize("name", ["page.tif", "page.mha"])
def test_single_page(make_case, fake_model_dir, tmp_path, name):
    page = brightness_pages([150])[0]  # (128, 128, 3): a 2-D RGB image
    check_probabilities(make_case(page, name=name), fake_model_dir, tmp_path, page[np.newaxis])


def test_more_pages_than_one_batch(make_case, fake_model_dir, tmp_path):
    pages = brightness_pages(np.resize(np.arange(30, 230, 7), 70))
    assert len(pages) > inference.model.BATCH_SIZE
    stderr = check_probabilities(make_case(pages, compression="deflate"), fake_model_dir, tmp_path, pages)
    assert "70 pages in 2 run(s)" in stderr


def test_greyscale(make_case, fake_model_dir, tmp_path):
    grey = brightness_pages([60, 180, 110])[..., 0]  # (3, 128, 128)
    expected = np.repeat(grey[..., None], 3, axis=-1)
    check_probabilities(make_case(grey, photometric="minisblack"), fake_model_dir, tmp_path, expected)


def test_rgba_drops_alpha(make_case, fake_model_dir, tmp_path):
    rgb = brightness_pages([40, 90, 140])
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:3], 1), 255, np.uint8)], axis=-1)  # alpha would raise the mean
    check_probabilities(make_case(rgba), fake_model_dir, tmp_path, rgb)


def test_uint16_divided_by_257_and_rounded(make_case, fake_model_dir, tmp_path):
    pages8 = brightness_pages([20, 100, 230])
    offsets = np.random.default_rng(1).integers(-128, 129, pages8.shape)  # round(v / 257) undoes these
    pages16 = np.clip(pages8.astype(np.int64) * 257 + offsets, 0, 65535).astype(np.uint16)
    check_probabilities(make_case(pages16), fake_model_dir, tmp_path, pages8)


def test_float_in_unit_range(make_case, fake_model_dir, tmp_path):
    pages8 = brightness_pages([20, 100, 230])
    pages = (pages8 / 255.0).astype(np.float32)
    check_probabilities(make_case(pages, name="stack.mha"), fake_model_dir, tmp_path, pages8)


def test_small_pages_centre_padded_with_black(make_case, fake_model_dir, tmp_path):
    pages = gradient_pages(3, 100, 100)
    expected = np.zeros((3, 128, 128, 3), np.uint8)
    expected[:, 14:114, 14:114] = pages
    stderr = check_probabilities(make_case(pages), fake_model_dir, tmp_path, expected)
    assert "100x100" in stderr


def test_large_pages_centre_cropped(make_case, fake_model_dir, tmp_path):
    pages = gradient_pages(3, 150, 140)
    expected = pages[:, 11:139, 6:134]
    check_probabilities(make_case(pages), fake_model_dir, tmp_path, expected)


def test_pad_one_axis_crop_the_other(make_case, fake_model_dir, tmp_path):
    pages = gradient_pages(2, 100, 150)
    expected = np.zeros((2, 128, 128, 3), np.uint8)
    expected[:, 14:114] = pages[:, :, 11:139]
    check_probabilities(make_case(pages), fake_model_dir, tmp_path, expected)


def test_fit_pages_offsets():
    pages = np.arange(5 * 3, dtype=np.uint8).reshape(1, 5, 3, 1)
    fitted = inference.images.fit_pages(pages, height=3, width=4)  # crop rows 1..3, pad one black column on the right
    expected = np.array([[3, 4, 5, 0], [6, 7, 8, 0], [9, 10, 11, 0]], np.uint8)
    np.testing.assert_array_equal(fitted[0, :, :, 0], expected)
    fitted = inference.images.fit_pages(pages, height=7, width=3)  # pad one black row above and one below
    np.testing.assert_array_equal(fitted[0, :, :, 0], np.pad(pages[0, :, :, 0], ((1, 1), (0, 0))))
    odd = inference.images.fit_pages(pages, height=2, width=2)  # odd surplus (3 rows, 1 column): the extra goes after
    np.testing.assert_array_equal(odd[0, :, :, 0], pages[0, 1:3, 0:2, 0])
    assert inference.images.fit_pages(pages, height=5, width=3) is pages


def test_without_inputs_json_uses_the_only_image(make_case, fake_model_dir, tmp_path):
    pages = brightness_pages([50, 150])
    stderr = check_probabilities(make_case(pages, inputs_json=False), fake_model_dir, tmp_path, pages)
    assert "no inputs.json" in stderr


def test_image_name_null_uses_the_only_image(make_case, fake_model_dir, tmp_path):
    pages = brightness_pages([50, 150])
    input_dir = make_case(pages)
    (input_dir / "inputs.json").write_text(json.dumps([stack_socket(None)]))
    check_probabilities(input_dir, fake_model_dir, tmp_path, pages)


# ---------------------------------------------------------------------------------------------
# where the image lies: grand-challenge names the file itself; image.name is the upload name


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".mha"])
def test_platform_names_the_file_inputs_json_the_upload(make_case, fake_model_dir, tmp_path, suffix):
    pages = brightness_pages([30, 120, 200])
    input_dir = make_case(pages, name="the_original_filename_of_the_file_that_was_uploaded.suffix",
                          on_disk=platform_file_name(suffix))
    stderr = check_probabilities(input_dir, fake_model_dir, tmp_path, pages)
    on_disk = stack_file(input_dir).name
    assert f"uploaded as 'the_original_filename_of_the_file_that_was_uploaded.suffix', on disk as {on_disk}" in stderr


def test_a_file_under_the_upload_name_is_preferred(make_case, fake_model_dir, tmp_path):
    """Hand-made cases name the file as inputs.json does; that file wins over any other image there."""
    pages = brightness_pages([60, 190])
    input_dir = make_case(pages, name="stack.tif", on_disk="stack.tif")
    write_image(input_dir / "images" / STACK_SLUG / f"{platform_file_name('.mha')}", brightness_pages([10, 10, 10]))
    check_probabilities(input_dir, fake_model_dir, tmp_path, pages)


def test_a_converted_stack_as_3d_rgb_mha(make_case, fake_model_dir, tmp_path):
    """A stack as panimg writes a converted one: 3-D (pages x height x width), RGB vector pixels, compressed."""
    pages = brightness_pages([30, 90, 150, 210])
    input_dir = make_case(pages, name="stack_5.tiff", on_disk=platform_file_name(".mha"))
    path = stack_file(input_dir)
    sitk.WriteImage(sitk.GetImageFromArray(pages, isVector=True), str(path), useCompression=True)
    image = sitk.ReadImage(str(path))
    assert (image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize()) == (3, 3, (128, 128, 4))
    check_probabilities(input_dir, fake_model_dir, tmp_path, pages)


def test_the_organisers_example_input(fake_model_dir, tmp_path):
    """The layout of the organisers' test/input/interf0/ (made by grand-challenge-forge): a 1x1 2-D float
    .mha under a UUID name, and an inputs.json naming a file that is not there. One page, one answer."""
    input_dir = tmp_path / "interf0"
    placeholder = sitk.Image([1, 1], sitk.sitkFloat64)
    placeholder.SetPixel([0, 0], 1.0)
    write_path = input_dir / "images" / STACK_SLUG / "a67a1ea8-901e-40bb-8966-0bc3e3e7fe17.mha"
    write_path.parent.mkdir(parents=True)
    sitk.WriteImage(placeholder, str(write_path))
    socket = stack_socket("the_original_filename_of_the_file_that_was_uploaded.suffix")
    (input_dir / "inputs.json").write_text(json.dumps([socket], indent=4))
    expected = np.zeros((1, 128, 128, 3), np.uint8)
    expected[0, 63, 63] = 255  # the white pixel, centre-padded with black
    stderr = check_probabilities(input_dir, fake_model_dir, tmp_path, expected)
    assert "1x1 centre-cropped/padded to 128x128" in stderr
    results = json.loads((tmp_path / "output" / OUTPUT_NAME).read_text())
    assert contract_problems(results, label="output") == []


def test_an_unsafe_upload_name_is_never_opened(make_case, fake_model_dir, tmp_path):
    """image.name is not a path: '../x.tif' names no file in the socket folder, so its one image is used."""
    pages = brightness_pages([80, 160])
    input_dir = make_case(pages, name="../decoy.tif")
    write_image(input_dir / "images" / "decoy.tif", brightness_pages([5, 5, 5]))
    check_probabilities(input_dir, fake_model_dir, tmp_path, pages)


def test_input_folder_reached_through_a_symlink(make_case, fake_model_dir, tmp_path):
    """The platform's /input is a symlink to a per-job folder."""
    pages = brightness_pages([40, 140])
    linked = tmp_path / "input-link"
    linked.symlink_to(make_case(pages), target_is_directory=True)
    check_probabilities(linked, fake_model_dir, tmp_path, pages)


def test_official_inputs_json_with_other_sockets(make_case, fake_model_dir, tmp_path):
    pages = brightness_pages([70, 170])
    input_dir = make_case(pages)
    other = {"interface": {"slug": "some-other-socket", "relative_path": "other.json"}, "value": 1}
    (input_dir / "inputs.json").write_text(json.dumps([other, stack_socket("stack.tif")]))
    check_probabilities(input_dir, fake_model_dir, tmp_path, pages)


# ---------------------------------------------------------------------------------------------
# inputs that must fail with one clear line


def corrupt_onnx(model_dir: Path) -> None:
    with (model_dir / "fake.onnx").open("ab") as handle:
        handle.write(b"\0")


def drop_key(model_dir: Path, key: str) -> None:
    spec = json.loads((model_dir / "model.json").read_text())
    *parents, last = key.split(".")
    node = spec
    for part in parents:
        node = node[part]
    del node[last]
    (model_dir / "model.json").write_text(json.dumps(spec))


def set_key(model_dir: Path, key: str, value) -> None:
    spec = json.loads((model_dir / "model.json").read_text())
    spec[key] = value
    (model_dir / "model.json").write_text(json.dumps(spec))


def write_zero_page_mha(path: Path) -> None:
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 128 128 0\nElementNumberOfChannels = 3\n"
                    "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n")


INPUT_FAULTS = {
    # name: (what to do to a valid input folder, what the error line must mention)
    "no inputs.json, no image": (lambda d: [p.unlink() for p in d.rglob("*") if p.is_file()], "inputs.json"),
    "no inputs.json, two images": (
        lambda d: ((d / "inputs.json").unlink(),
                   write_image(d / "images" / STACK_SLUG / "second.tif", brightness_pages([9]))),
        "2 images"),
    "malformed JSON": (lambda d: (d / "inputs.json").write_text('[{"interface": '), "not valid JSON"),
    "not a list": (lambda d: (d / "inputs.json").write_text('{"interface": {"slug": "x"}}'), "not a list of sockets"),
    "list of non-sockets": (lambda d: (d / "inputs.json").write_text("[1, 2]"), "not a list of sockets"),
    "unknown slug": (
        lambda d: (d / "inputs.json").write_text(json.dumps([{"interface": {"slug": "histopathology-region"}}])),
        "histopathology-region"),
    "no image file": (lambda d: stack_file(d).unlink(), "no image file (.tif, .tiff, .mha) for socket"),
    "no socket folder": (lambda d: shutil.rmtree(d / "images"), "which does not exist"),
    "only a file of another type": (
        lambda d: stack_file(d).rename(d / "images" / STACK_SLUG / "stack.png"), "no image file"),
    "no image named, none there": (
        lambda d: ((d / "inputs.json").write_text(json.dumps([stack_socket(None)])), stack_file(d).unlink()),
        "inputs.json names no image"),
    "two images, neither named": (
        lambda d: write_image(d / "images" / STACK_SLUG / "zz-second.mha", brightness_pages([9])),  # sorts last
        ".tif, zz-second.mha) and none of them is the named one (inputs.json's image.name: 'stack.tif')"),
    "corrupt image": (lambda d: stack_file(d).write_bytes(b"II*\0" + b"junk" * 50), "damaged image"),
    "truncated image": (lambda d: stack_file(d).write_bytes(stack_file(d).read_bytes()[:3000]), "damaged image"),
    "zero pages": (
        lambda d: (stack_file(d).unlink(), write_zero_page_mha(d / "images" / STACK_SLUG / "empty.mha")),
        "no pages"),
    "float outside [0, 1]": (
        lambda d: write_image(stack_file(d), np.full((2, 128, 128, 3), 3.5, np.float32)), "[0, 1]"),
    "negative int16": (lambda d: write_image(stack_file(d), np.full((2, 128, 128, 3), -4, np.int16)), "int16"),
}


@pytest.mark.parametrize("fault", list(INPUT_FAULTS))
def test_bad_input(make_case, fake_model_dir, tmp_path, fault):
    input_dir = make_case(brightness_pages([100, 200]))
    damage, mentions = INPUT_FAULTS[fault]
    damage(input_dir)
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, fake_model_dir), output_dir, mentions)


MODEL_FAULTS = {
    "no model.json": (lambda d: (d / "model.json").unlink(), "model.json"),
    "missing threshold": (lambda d: drop_key(d, "threshold"), "threshold"),
    "missing input.height": (lambda d: drop_key(d, "input.height"), "input.height"),
    "missing onnx_sha256": (lambda d: drop_key(d, "onnx_sha256"), "onnx_sha256"),
    "format_version 2": (lambda d: set_key(d, "format_version", 2), "format_version"),
    "model.json not JSON": (lambda d: (d / "model.json").write_text("{"), "model.json"),
    "onnx missing": (lambda d: (d / "fake.onnx").unlink(), "fake.onnx"),
    "sha256 mismatch": (corrupt_onnx, "sha256"),
    "wrong output name": (lambda d: set_key(d, "output", {"name": "logits"}), "logits"),
    "NaN output": (lambda d: rewrite_graph(d, bias=float("nan")), "NaN"),
    "unknown confidence meaning": (lambda d: set_key(d, "confidence", "p_normal"), "confidence is 'p_normal'"),
    "confidence of the predicted class": (lambda d: set_key(d, "confidence", "predicted_class"),
                                          "the only value is 'p_atypical'"),
    "classes swapped": (lambda d: set_key(d, "classes", ["atypical", "normal"]), "accepts exactly ['normal', 'atypical']"),
    "classes renamed": (lambda d: set_key(d, "classes", ["NMF", "AMF"]), "classes are ['NMF', 'AMF']"),
}


def test_an_empty_upload_folder_falls_back_to_the_baked_in_model(fake_model_dir, tmp_path):
    """Grand-challenge leaves /opt/ml/model/ empty when no model tarball was uploaded."""
    upload = tmp_path / "opt-ml-model"
    upload.mkdir()
    assert inference.model.find_model_dir([upload, fake_model_dir]) == fake_model_dir
    assert inference.model.find_model_dir([tmp_path / "absent", fake_model_dir]) == fake_model_dir


def test_a_misshapen_upload_is_an_error_not_a_fallback(fake_model_dir, tmp_path):
    """A tarball of the model folder (model/model.json) instead of its files must not run the baked-in model."""
    upload = tmp_path / "opt-ml-model"
    shutil.copytree(fake_model_dir, upload / "model")
    with pytest.raises(inference.errors.InputError, match=r"no model.json: it lies one folder down, at .*model/model.json"):
        inference.model.find_model_dir([upload, fake_model_dir])
    shutil.rmtree(upload / "model")
    (upload / "notes.txt").write_text("not a model")
    with pytest.raises(inference.errors.InputError, match="holds files but no model.json$"):
        inference.model.find_model_dir([upload, fake_model_dir])


@pytest.mark.parametrize("fault", list(MODEL_FAULTS))
def test_bad_model(make_case, tmp_path, fault):
    input_dir = make_case(brightness_pages([100, 200]))
    model_dir = write_fake_model(tmp_path / "model")
    damage, mentions = MODEL_FAULTS[fault]
    damage(model_dir)
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, model_dir), output_dir, mentions)


def test_timings_report_every_phase(make_case, fake_model_dir, tmp_path):
    completed = run_process(make_case(brightness_pages([100, 200])), tmp_path / "output", fake_model_dir, "--timings")
    assert completed.returncode == 0, completed.stderr
    (line,) = [line for line in completed.stderr.splitlines() if line.startswith("process: timings ")]
    timings = json.loads(line.removeprefix("process: timings "))
    assert set(timings) == {"started_at", "load", "read", "infer", "write", "ended_at"}
    assert all(value >= 0 for value in timings.values())
    assert timings["started_at"] <= timings["ended_at"]
    plain = run_process(make_case(brightness_pages([100])), tmp_path / "again", fake_model_dir)
    assert "process: timings" not in plain.stderr


def test_confidence_is_p_atypical_for_normal_pages_too(make_case, fake_model_dir, tmp_path):
    """The evaluator reads confidence as P(atypical) whatever the class: a normal page's is small, not 1 - P."""
    pages = brightness_pages([40, 120, 200, 250])
    output_dir = tmp_path / "output"
    results = read_results(run_process(make_case(pages), output_dir, fake_model_dir), output_dir)
    normal = [item["confidence"] for item in results if item["class"] == "normal"]
    assert normal and all(value < 0.5 for value in normal)
    np.testing.assert_allclose(confidences(results), fake_probability(pages), atol=1e-6)


def test_write_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inference.output.os, "replace", failing_replace)
    with pytest.raises(inference.errors.InputError, match="No space left"):
        inference.output.write_json(path=tmp_path / "out" / OUTPUT_NAME, payload=[{"class": "normal", "confidence": 0.1}])
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# model lookup and session


def test_model_lookup_falls_back_past_an_empty_folder(tmp_path, fake_model_dir):
    empty = tmp_path / "opt-ml-model"
    empty.mkdir()
    second = write_fake_model(tmp_path / "repo-model")
    assert inference.model.find_model_dir([empty, tmp_path / "missing", second]) == second
    assert inference.model.find_model_dir([fake_model_dir, second]) == fake_model_dir
    with pytest.raises(inference.errors.InputError, match="no model.json"):
        inference.model.find_model_dir([empty, tmp_path / "missing"])
    assert process.MODEL_PATHS == (Path("/opt/ml/model"), REPO / "model")


def _record_sessions(monkeypatch, providers_offered, *, driver=True, cuda_fails=False):
    """Fake onnxruntime's provider list, the driver check and InferenceSession; return the call log."""
    calls = []

    class RecordingSession:
        def __init__(self, path, sess_options, providers):
            calls.append(("session", providers, sess_options.intra_op_num_threads))
            if cuda_fails and "CUDAExecutionProvider" in providers:
                raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(inference.model.ort, "get_available_providers", lambda: providers_offered)
    monkeypatch.setattr(inference.model.ort, "preload_dlls", lambda: calls.append(("preload",)), raising=False)
    monkeypatch.setattr(inference.model.ort, "InferenceSession", RecordingSession)
    monkeypatch.setattr(inference.model, "nvidia_driver_loads", lambda: driver)
    return calls


BOTH = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]


def test_session_prefers_cuda_when_offered(monkeypatch, fake_model_dir):
    calls = _record_sessions(monkeypatch, BOTH)
    inference.model.create_session(fake_model_dir / "fake.onnx")
    cpus = len(os.sched_getaffinity(0))
    assert calls == [("preload",), ("session", BOTH, cpus)]


def test_session_is_cpu_only_without_cuda_build_or_driver(monkeypatch, fake_model_dir):
    cpus = len(os.sched_getaffinity(0))
    calls = _record_sessions(monkeypatch, CPU)
    inference.model.create_session(fake_model_dir / "fake.onnx")
    assert calls == [("session", CPU, cpus)]
    calls = _record_sessions(monkeypatch, BOTH, driver=False)  # onnxruntime-gpu, but no GPU passed in
    inference.model.create_session(fake_model_dir / "fake.onnx")
    assert calls == [("session", CPU, cpus)]


def test_a_failing_cuda_session_falls_back_to_the_cpu(monkeypatch, fake_model_dir, capsys):
    calls = _record_sessions(monkeypatch, BOTH, cuda_fails=True)
    inference.model.create_session(fake_model_dir / "fake.onnx")
    assert [c[1] for c in calls if c[0] == "session"] == [BOTH, CPU]
    assert "CUDA session failed (CUDA driver version is insufficient" in capsys.readouterr().err


def test_nvidia_driver_check_is_false_without_a_gpu():
    # This machine class has no NVIDIA driver; where one exists the check must say so.
    assert inference.model.nvidia_driver_loads() == Path("/proc/driver/nvidia").exists()


# ---------------------------------------------------------------------------------------------
# what process.py imports

HEAVY_MODULES = ("torch", "timm", "training", "torchvision", "PIL", "onnx")

IMPORT_PROBE = """
import json, runpy, sys
sys.argv = ["process.py", "--input", sys.argv[1], "--output", sys.argv[2], "--model", sys.argv[3]]
try:
    runpy.run_path("process.py", run_name="__main__")
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({"code": code, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def imported_by_process(input_dir: Path, model_dir: Path, output_dir: Path) -> set[str]:
    """Top-level modules loaded in a process that ran process.py on one case."""
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(input_dir), str(output_dir), str(model_dir)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    report = json.loads(probe.stdout.splitlines()[-1])
    assert report["code"] == 0, probe.stderr
    return set(report["modules"])


@pytest.mark.parametrize("name", ["stack.tiff", "stack.mha"])
def test_process_imports_nothing_heavy(make_case, fake_model_dir, tmp_path, name):
    """A stack as the platform hands it over is read without SimpleITK, the slowest import after numpy."""
    modules = imported_by_process(make_case(brightness_pages([100]), name=name), fake_model_dir, tmp_path / "output")
    assert {"numpy", "onnxruntime"} <= modules  # the probe does see what process.py imports
    assert "SimpleITK" not in modules
    assert ("tifffile" in modules) == name.endswith(".tiff")  # imported only for a TIFF
    assert modules.isdisjoint(HEAVY_MODULES), sorted(modules & set(HEAVY_MODULES))


def test_simpleitk_is_imported_for_what_only_it_reads(make_case, fake_model_dir, tmp_path):
    input_dir = make_case(brightness_pages([100, 200]))
    path = stack_file(input_dir)
    sitk.WriteImage(sitk.GetImageFromArray(brightness_pages([100, 200]), isVector=True), str(path),
                    useCompression=True, compressor="LZW")
    assert "SimpleITK" in imported_by_process(input_dir, fake_model_dir, tmp_path / "output")
    check_probabilities(input_dir, fake_model_dir, tmp_path, brightness_pages([100, 200]))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a source file imports, anywhere in it."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0] if node.level == 0 else "<relative>")
    return imported - set(sys.stdlib_module_names)


PACKAGE = REPO / "inference"


def test_process_imports_only_the_inference_package():
    """process.py is the platform's thin entry point: the work is in inference/."""
    assert imported_modules(REPO / "process.py") == {"inference"}
    assert not (REPO / "crops.py").exists() and not (REPO / "image_checks.py").exists()  # moved into the package


@pytest.mark.parametrize("module", sorted(path.name for path in PACKAGE.glob("*.py")))
def test_the_package_imports_no_torch_and_nothing_from_training(module):
    assert imported_modules(PACKAGE / module) <= {"numpy", "SimpleITK", "tifffile", "onnxruntime", "inference"}


def test_the_image_gets_process_py_and_the_whole_package():
    """The Dockerfile copies, and .dockerignore lets through, process.py and inference/ (and no training code)."""
    copied = set()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "/opt/app/" in line.split()[-1]:
            copied |= set(line.split()[1:-1])
    allowed = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert {"process.py", "inference/"} <= copied and {"process.py", "inference/"} <= allowed
    assert not any(name.startswith(("training", "tests", "benchmarks")) for name in copied | allowed)
