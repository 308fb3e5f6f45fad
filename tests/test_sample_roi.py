"""Tests of training/sample_roi.py, the project's synthetic whole-image sample case for the points interface."""

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference import crops
from inference.contract import POINTS_SLUG, ROI_SLUG
from inference.images import read_roi
from inference.points import parse_points, points_value
from inference.sockets import socket_image_path
from training import sample_roi

REPO = Path(__file__).resolve().parents[1]
CASE = REPO / "test" / "points" / "input"


@pytest.fixture(scope="module")
def roi() -> np.ndarray:
    return sample_roi.render_roi(seed=0)


def test_shape_dtype_and_determinism(roi):
    assert roi.shape == (480, 640, 3) and roi.dtype == np.uint8
    np.testing.assert_array_equal(sample_roi.render_roi(seed=0), roi)
    assert not np.array_equal(sample_roi.render_roi(seed=1), roi)


def test_figures_are_dark_and_centred_on_their_points(roi):
    """Each figure's crop has its darkest chromatin in the middle, like the official crops."""
    patches = crops.crop_points(roi, [(x, y) for x, y, _ in sample_roi.FIGURES])
    darkness = 255 - patches.mean(axis=-1)  # (N, 128, 128)
    middle = darkness[:, 44:84, 44:84].reshape(len(patches), -1)
    assert np.all(np.sort(middle, axis=1)[:, -50:].mean(axis=1) > 150)  # dense chromatin in every middle


def test_figures_near_the_edge_give_black_padded_crops(roi):
    near_edge = [(x, y) for x, y, _ in sample_roi.FIGURES
                 if min(x, y, sample_roi.ROI_WIDTH - 1 - x, sample_roi.ROI_HEIGHT - 1 - y) < 20]
    assert len(near_edge) >= 1
    for patch in crops.crop_points(roi, near_edge):
        assert (patch.max(axis=-1) == 0).mean() > 0.3


def test_written_case_reads_back_as_process_py_reads_it(tmp_path, roi):
    folder = sample_roi.write_roi_case(tmp_path / "case")
    sockets = json.loads((folder / "inputs.json").read_text())
    assert [socket["interface"]["slug"] for socket in sockets] == [ROI_SLUG, POINTS_SLUG]
    path = socket_image_path(sockets[0], input_dir=folder)
    assert sitk.ReadImage(str(path)).GetSpacing() == (0.00025, 0.00025)
    image, geometry = read_roi(path=path)
    np.testing.assert_array_equal(image, roi)
    value, source = points_value(sockets[1], input_dir=folder)
    pixels = geometry.to_pixels(np.array([point[:2] for point in parse_points(value, source=source)]))
    np.testing.assert_allclose(pixels, [(x, y) for x, y, _ in sample_roi.FIGURES], atol=1e-5)


def test_the_image_is_named_as_the_platform_names_it(tmp_path):
    folder = sample_roi.write_roi_case(tmp_path / "case")
    sockets = json.loads((folder / "inputs.json").read_text())
    (image,) = (folder / sample_roi.ROI_RELATIVE_PATH).iterdir()
    assert sockets[0]["image"]["name"] == sample_roi.SAMPLE_NAME != image.name
    assert uuid.UUID(image.stem).version == 4 and image.suffix == ".tiff"
