"""Tests of inference/crops.py, the cropping shared by the container and training: centres, edges, outside points, resampling.

Expected patches are cut by hand here (numpy padding and slicing), independently of crops.py.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

from inference import crops

REPO = Path(__file__).resolve().parents[1]


def crop_at(image: np.ndarray, x: float, y: float, size=crops.PATCH_SIZE) -> np.ndarray:
    """The one patch crops.crop_points cuts around (x, y)."""
    return crops.crop_points(image, [(x, y)], size=size)[0]


def ramp_image(height: int = 300, width: int = 400) -> np.ndarray:
    """An RGB image in which every pixel differs from its neighbours (so offsets show)."""
    rows, columns = np.mgrid[0:height, 0:width]
    return np.stack([rows % 251, columns % 253, (rows * 7 + columns * 3) % 256], axis=-1).astype(np.uint8)


def hand_crop(image: np.ndarray, column: int, row: int, size: int = 128) -> np.ndarray:
    """image[row - size/2 : row + size/2, column - size/2 : column + size/2], black beyond the image."""
    padded = np.pad(image, ((size, size), (size, size), (0, 0)))
    return padded[row + size - size // 2:row + size + size - size // 2,
                  column + size - size // 2:column + size + size - size // 2]


IMAGE = ramp_image()


@pytest.mark.parametrize("column, row", [(200, 150), (64, 64), (335, 235), (100, 236)])
def test_interior_crop_is_the_hand_cut_slice(column, row):
    patch = crop_at(IMAGE, column, row)
    assert patch.shape == (128, 128, 3) and patch.dtype == np.uint8
    np.testing.assert_array_equal(patch, IMAGE[row - 64:row + 64, column - 64:column + 64])
    np.testing.assert_array_equal(patch[64, 64], IMAGE[row, column])  # the centre pixel at index size // 2


@pytest.mark.parametrize("x, y, column, row", [
    (200.4, 150.49, 200, 150), (200.5, 150.5, 201, 151), (199.51, 149.6, 200, 150), (-0.5, -0.4, 0, 0),
])
def test_a_non_integer_centre_is_rounded_half_up(x, y, column, row):
    np.testing.assert_array_equal(crop_at(IMAGE, x, y), hand_crop(IMAGE, column, row))


@pytest.mark.parametrize("column, row", [(0, 0), (399, 0), (0, 299), (399, 299)])
def test_corners_are_black_padded_with_the_figure_centred(column, row):
    patch = crop_at(IMAGE, column, row)
    np.testing.assert_array_equal(patch, hand_crop(IMAGE, column, row))
    np.testing.assert_array_equal(patch[64, 64], IMAGE[row, column])
    inside_rows = slice(64, 128) if row == 0 else slice(0, 65)
    inside_columns = slice(64, 128) if column == 0 else slice(0, 65)
    assert (patch != 0).any(axis=-1)[inside_rows, inside_columns].mean() > 0.95
    black = np.ones((128, 128), bool)
    black[inside_rows, inside_columns] = False
    assert not patch[black].any()  # three quarters of the patch lie beyond the image


def test_edges_are_black_only_beyond_the_image():
    near_left = crop_at(IMAGE, 10, 150)
    assert not near_left[:, :54].any() and near_left[:, 54:].any(axis=-1).mean() > 0.95
    near_bottom = crop_at(IMAGE, 200, 290)
    assert not near_bottom[64 + 10:].any()
    np.testing.assert_array_equal(near_bottom[:74], IMAGE[290 - 64:, 136:264])


def test_small_image_padded_on_every_side():
    tiny = ramp_image(20, 30)
    patch = crop_at(tiny, 15, 10)
    np.testing.assert_array_equal(patch[54:74, 49:79], tiny)
    assert patch.sum() == tiny.sum()


@pytest.mark.parametrize("x, y", [(-0.51, 10), (399.5, 10), (10, -1), (10, 299.5), (1e9, 1e9)])
def test_a_point_outside_the_image_is_an_error(x, y):
    with pytest.raises(ValueError, match=r"outside the 400x300 image"):
        crop_at(IMAGE, x, y)


def test_the_error_names_the_first_outside_point_and_counts_them():
    with pytest.raises(ValueError, match=r"point 1 at \(x, y\) = \(-5, 10\).*2 points outside"):
        crops.crop_points(IMAGE, [(5, 5), (-5, 10), (500, 10)])


@pytest.mark.parametrize("points", [[(np.nan, 1.0)], [(1.0, np.inf)], [(1, 2, 3)], [1, 2]])
def test_malformed_points_are_errors(points):
    with pytest.raises(ValueError, match="points must be"):
        crops.crop_points(IMAGE, points)


def test_crop_points_keeps_order_and_batches():
    points = [(200, 150), (0, 0), (123.4, 45.6), (399, 299)]
    patches = crops.crop_points(IMAGE, points)
    assert patches.shape == (4, 128, 128, 3) and patches.dtype == np.uint8
    for patch, (x, y) in zip(patches, points):
        np.testing.assert_array_equal(patch, hand_crop(IMAGE, int(np.floor(x + 0.5)), int(np.floor(y + 0.5))))
    assert crops.crop_points(IMAGE, []).shape == (0, 128, 128, 3)
    assert crops.crop_points(IMAGE, np.zeros((0, 2))).shape == (0, 128, 128, 3)


def test_other_sizes_put_the_centre_at_size_over_two():
    odd = crop_at(IMAGE, 200, 150, size=5)
    np.testing.assert_array_equal(odd, IMAGE[148:153, 198:203])
    wide = crops.crop_points(IMAGE, [(200, 150)], size=(4, 6))[0]
    np.testing.assert_array_equal(wide, IMAGE[148:152, 197:203])
    with pytest.raises(ValueError, match="positive"):
        crop_at(IMAGE, 200, 150, size=0)


def test_inside_matches_the_rounding_rule():
    points = np.array([(-0.5, 0), (-0.51, 0), (399.49, 0), (399.5, 0), (0, 299.49), (0, 299.5)])
    np.testing.assert_array_equal(crops.inside(points, height=300, width=400),
                                  [True, False, True, False, True, False])


# ---------------------------------------------------------------------------------------------
# fit_centred: the centre crop/pad of whole patches (process.fit_pages, training's fit_to_size)


def test_fit_centred_offsets():
    pages = np.arange(5 * 3, dtype=np.uint8).reshape(1, 5, 3, 1)
    fitted = crops.fit_centred(pages, height=3, width=4)  # crop rows 1..3, pad one black column on the right
    np.testing.assert_array_equal(fitted[0, :, :, 0], [[3, 4, 5, 0], [6, 7, 8, 0], [9, 10, 11, 0]])
    padded = crops.fit_centred(pages, height=7, width=3)  # one black row above and one below
    np.testing.assert_array_equal(padded[0, :, :, 0], np.pad(pages[0, :, :, 0], ((1, 1), (0, 0))))
    odd = crops.fit_centred(pages, height=2, width=2)  # odd surplus: the extra row/column goes after
    np.testing.assert_array_equal(odd[0, :, :, 0], pages[0, 1:3, 0:2, 0])
    assert crops.fit_centred(pages, height=5, width=3) is pages


def test_fit_centred_takes_one_image_or_a_batch():
    image = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    np.testing.assert_array_equal(crops.fit_centred(image, height=4, width=4), image[1:5])
    padded = crops.fit_centred(image, height=8, width=8)
    assert padded.shape == (8, 8, 3)
    np.testing.assert_array_equal(padded[1:7, 2:6], image)
    batch = crops.fit_centred(np.stack([image, image + 1]), height=8, width=8)
    np.testing.assert_array_equal(batch[1], padded + np.pad(np.ones((6, 4, 3), np.uint8), ((1, 1), (2, 2), (0, 0))))


def test_fit_centred_is_the_crop_around_the_middle_pixel_for_even_sizes():
    for height, width in [(150, 140), (100, 100), (100, 150), (129, 131)]:
        image = ramp_image(height, width)
        np.testing.assert_array_equal(crops.fit_centred(image, height=128, width=128),
                                      crop_at(image, width // 2, height // 2))


# ---------------------------------------------------------------------------------------------
# resampling


@pytest.mark.parametrize("spacing, shape", [
    (0.5, (600, 800)), ((0.5, 0.25), (300, 800)), (0.125, (150, 200)), (0.3, (360, 480)),
])
def test_resampled_size(spacing, shape):
    resampled = crops.resample_to_spacing(IMAGE, spacing)
    assert resampled.shape == (*shape, 3) and resampled.dtype == np.uint8


def test_at_the_target_spacing_nothing_changes():
    assert crops.resample_to_spacing(IMAGE, 0.25) is IMAGE
    assert crops.resample_to_spacing(IMAGE, (0.25, 0.25)) is IMAGE


@pytest.mark.parametrize("spacing", [0.5, 0.125, (0.5, 0.125)])
def test_resampling_keeps_a_flat_image_flat_to_its_edges(spacing):
    flat = np.full((40, 60, 3), (200, 120, 180), np.uint8)
    resampled = crops.resample_to_spacing(flat, spacing)
    np.testing.assert_array_equal(resampled, np.broadcast_to(flat[0, 0], resampled.shape))


def test_upsampling_interpolates_linearly_between_pixel_centres():
    ramp = np.repeat((np.arange(50) * 4).astype(np.float32)[None, :, None], 10, axis=0)  # (10, 50, 1)
    resampled = crops.resample_to_spacing(ramp, 0.5)[0, :, 0]
    # new pixel i sits at old x = (i + 0.5) / 2 - 0.5; the ends hold the edge values
    expected = np.clip(((np.arange(100) + 0.5) / 2 - 0.5) * 4, 0, 196)
    np.testing.assert_allclose(resampled, expected, atol=1e-4)


def test_points_follow_the_resampling():
    points = np.array([[0.0, 0.0], [10.0, 20.0], [399.0, 299.0]])
    np.testing.assert_allclose(crops.points_at_spacing(points, 0.5), [[0.5, 0.5], [20.5, 40.5], [798.5, 598.5]])
    np.testing.assert_allclose(crops.points_at_spacing(points, 0.25), points)
    np.testing.assert_allclose(crops.points_at_spacing(points, (0.125, 0.5)), [[-0.25, 0.5], [4.75, 40.5], [199.25, 598.5]])


def test_crop_with_spacing_resamples_then_crops_around_the_mapped_point():
    image = np.zeros((100, 120, 3), np.uint8)
    image[40, 70] = 255  # one bright pixel at (x, y) = (70, 40), on a 0.5 um/px image
    patch = crops.crop_points(image, [(70, 40)], spacing_um=0.5)[0]
    brightest = np.unravel_index(patch[..., 0].argmax(), patch.shape[:2])
    assert abs(brightest[0] - 64) <= 1 and abs(brightest[1] - 64) <= 1
    by_hand = crops.crop_points(crops.resample_to_spacing(image, 0.5), crops.points_at_spacing([(70, 40)], 0.5))
    np.testing.assert_array_equal(patch, by_hand[0])
    with pytest.raises(ValueError, match="outside"):  # checked against the image as given
        crops.crop_points(image, [(120, 40)], spacing_um=0.5)


def test_downsampling_blurs_against_aliasing():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a factor 2 shrink without a blur would keep one phase only
    resampled = crops.resample_to_spacing(stripes, 0.125)
    assert abs(float(resampled.mean()) - 127.5) < 10 and resampled[8:-8, 8:-8].std() < 20


@pytest.mark.parametrize("spacing, expected", [
    (0.25, False), (0.227, False), (0.2634, False), (0.5, True), (0.125, True), ((0.25, 0.5), True),
    (1000.0, False), (0.001, False),
])
def test_needs_resampling(spacing, expected):
    assert crops.needs_resampling(spacing) is expected


@pytest.mark.parametrize("spacing", [0, -0.25, (0.25,), np.nan])
def test_bad_spacing_is_an_error(spacing):
    with pytest.raises(ValueError, match="spacing"):
        crops.resample_to_spacing(IMAGE, spacing)


def test_crops_module_imports_numpy_alone_at_the_top():
    tree = ast.parse((REPO / "inference" / "crops.py").read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_level.add((node.module or "").split(".")[0])
    assert top_level == {"numpy", "collections", "inference"}  # inference: the patch size, from contract.py
