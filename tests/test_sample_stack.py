"""Tests of training/sample_stack.py, the project's synthetic sample input."""

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from training import sample_stack


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return sample_stack.render_stack(16, seed=0)


def test_shape_and_dtype(stack):
    assert stack.shape == (16, 128, 128, 3) and stack.dtype == np.uint8


def test_deterministic_given_seed(stack):
    np.testing.assert_array_equal(sample_stack.render_stack(16, seed=0), stack)
    assert not np.array_equal(sample_stack.render_stack(16, seed=1), stack)


def test_black_borders_only_where_intended(stack):
    black_rows = [int((page.max(axis=(1, 2)) == 0).sum()) for page in stack]
    black_columns = [int((page.max(axis=(0, 2)) == 0).sum()) for page in stack]
    assert black_rows[3] == 20 and np.all(stack[3, :20] == 0)
    assert black_columns[10] == 35 and np.all(stack[10, :, :35] == 0)
    assert sum(black_rows) + sum(black_columns) == 20 + 35  # no other page has a black edge


def test_looks_like_h_and_e(stack):
    """Pink-purple on average (R and B above G), with dark chromatin concentrated in the centre."""
    brightness = stack.mean(axis=-1)
    tissue = brightness > 0  # black borders left out
    red, green, blue = stack[tissue].mean(axis=0)
    assert red > green + 20 and blue > green + 10
    dark = (brightness < 120) & tissue
    centre = np.zeros((128, 128), bool)
    centre[44:84, 44:84] = True
    dark_in_centre = dark[:, centre].mean(axis=1)
    dark_elsewhere = dark[:, ~centre].mean(axis=1)
    assert np.all(dark_in_centre > 0.05) and np.all(dark_in_centre > 2 * dark_elsewhere)


def test_render_patch_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        sample_stack.render_patch(np.random.default_rng(0), "prophase")


def test_tiff_round_trip_through_simpleitk(stack, tmp_path):
    path = sample_stack.write_stack(tmp_path / "stack.tiff", stack)
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    assert array.shape == (16, 128, 128, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array, stack)
    with tifffile.TiffFile(path) as tiff:
        assert len(tiff.pages) == 16
        page = tiff.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert page.tags["XResolution"].value == (40000, 1)  # 0.25 um/px


@pytest.mark.parametrize("layout", list(sample_stack.LAYOUTS))
def test_sample_case_layout(tmp_path, layout):
    """Laid out as grand-challenge does: the one image in the socket folder, its upload name in inputs.json,
    and the file itself named by the platform (a UUID) unless hand-named."""
    from inference.contract import STACK_SLUG
    from inference.images import read_stack
    from inference.sockets import socket_image_path
    from training.cli import main as training_cli

    case = tmp_path / "case"
    arguments = ["make-sample", "--out", str(case), "--pages", "3", "--seed", "2", "--layout", layout]
    assert training_cli(arguments) == 0
    sockets = json.loads((case / "inputs.json").read_text())
    assert len(sockets) == 1
    interface = sockets[0]["interface"]
    assert (interface["slug"], interface["relative_path"]) == (STACK_SLUG, f"images/{STACK_SLUG}")
    (image,) = (case / interface["relative_path"]).iterdir()
    upload_name = sockets[0]["image"]["name"]
    suffix, hand_named = sample_stack.LAYOUTS[layout]
    assert image.suffix == suffix and Path(upload_name).suffix == suffix
    if hand_named:
        assert image.name == upload_name == "stack_sample.tiff"
    else:
        assert image.name != upload_name
        assert uuid.UUID(image.stem).version == 4
    if suffix == ".mha":
        itk_image = sitk.ReadImage(str(image))
        assert (itk_image.GetDimension(), itk_image.GetNumberOfComponentsPerPixel()) == (3, 3)
    assert socket_image_path(sockets[0], input_dir=case) == image
    np.testing.assert_array_equal(read_stack(path=image), sample_stack.render_stack(3, seed=2))


def test_committed_sample_cases_are_the_renderers_output(tmp_path):
    """Every case under test/ is made by the project (seed 0, 16 pages), not copied from elsewhere."""
    from training.cli import SAMPLE_CASES
    from training.cli import main as training_cli

    repo = Path(__file__).resolve().parents[1]
    for folder in SAMPLE_CASES:
        arguments = ["make-sample", "--out", str(tmp_path / folder), "--seed", "0", "--pages", "16"]
        layout = SAMPLE_CASES[folder]
        assert training_cli(arguments + (["--points"] if layout is None else ["--layout", layout])) == 0
        written = sorted(path.relative_to(tmp_path) for path in (tmp_path / folder).rglob("*") if path.is_file())
        committed = sorted(path.relative_to(repo) for path in (repo / folder).rglob("*") if path.is_file())
        assert written == committed, folder
        for relative in written:
            assert (tmp_path / relative).read_bytes() == (repo / relative).read_bytes(), relative
