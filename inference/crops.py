"""Patches around mitotic figures: the one cropping code shared by the container and training/.

MIDOG 2025 Track 2 hands over 128x128 RGB crops centred on mitotic figures, cut at the scanner's own
resolution (about 0.25 um/px), with black where the crop reaches past the edge of its region of
interest. Whole images plus candidate points (a Track 1 detector's output, or annotations) must
become the same kind of patch, whether the container classifies them or training learns from them;
so both cut them here. The module lives in the inference package, which the container copies
whole and which imports nothing from training/ (which pulls in torch); training imports it as
`from inference import crops`.

Conventions, for every function below:

- An image is an (H, W, C) array (any dtype); a point is (x, y) in pixels, x the column and y the
  row, with the centre of pixel (row r, column c) at (c, r), as SimpleITK's continuous index has it.
- A centre that is not a whole pixel is rounded half up: pixel floor(x + 0.5), so 10.5 -> 11 and
  10.49 -> 10. A point lies inside the image when its rounded pixel does, i.e.
  -0.5 <= x < W - 0.5 and -0.5 <= y < H - 0.5; any other point is an error (ValueError).
- The centre pixel lands at index (size // 2, size // 2) of the patch, as in slicing
  `image[y - 64:y + 64, x - 64:x + 64]`; parts of the patch beyond the image are black, and the
  figure stays centred, like the official edge crops.
- Resampling (optional) maps an image at `spacing_um` onto a grid at `target_um` with the same
  outer edges (pixel areas aligned, as PIL and OpenCV resize): a point at x becomes
  (x + 0.5) * spacing / target - 0.5. Linear interpolation, after a Gaussian blur of sigma
  (factor - 1) / 2 source pixels when shrinking by `factor`, against aliasing (the rule of
  scikit-image's `rescale`).

Cropping needs numpy alone; resampling imports SimpleITK, which both environments have.
"""

from collections.abc import Sequence

import numpy as np

from inference.contract import PATCH_SIZE
TARGET_SPACING_UM = 0.25  # the resolution of the official crops (40x scanners)
# Spacings that count as 40x: the official crops were cut at each scanner's own resolution in this
# range (about 0.23 to 0.26 um/px among the MIDOG scanners), so images within it are cut as they are.
NATIVE_SPACING_UM = (0.2, 0.3)
# Beyond this range a spacing is not a microscope's (SimpleITK reads 1 mm when a TIFF has none).
PLAUSIBLE_SPACING_UM = (0.05, 2.0)


def centre_pixels(points: np.ndarray) -> np.ndarray:
    """(N, 2) points (x, y) -> (N, 2) int64 pixel (column, row), rounded half up."""
    return np.floor(np.asarray(points, dtype=np.float64) + 0.5).astype(np.int64)


def as_points(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Points as a float64 (N, 2) array of finite (x, y); ValueError otherwise."""
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"points must be (x, y) pairs, got an array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("points must be finite numbers")
    return array


def inside(points: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """(N,) bool: whether each point's rounded pixel lies within an image of height x width."""
    columns, rows = centre_pixels(as_points(points)).T
    return (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)


def window(image: np.ndarray, *, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The height x width window of `image` (..., H, W, C) from (top, left), black where it leaves the image."""
    *leading, image_height, image_width, channels = image.shape
    result = np.zeros((*leading, height, width, channels), dtype=image.dtype)
    source_top, source_left = max(top, 0), max(left, 0)
    source_bottom, source_right = min(top + height, image_height), min(left + width, image_width)
    if source_bottom > source_top and source_right > source_left:
        result[..., source_top - top:source_bottom - top, source_left - left:source_right - left, :] = (
            image[..., source_top:source_bottom, source_left:source_right, :])
    return result


def patch_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """`size` as (height, width): one number for a square patch."""
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if height <= 0 or width <= 0:
        raise ValueError(f"patch size must be positive, got {size}")
    return int(height), int(width)


def crop_points(image: np.ndarray, points: Sequence[Sequence[float]] | np.ndarray, *,
                size: int | tuple[int, int] = PATCH_SIZE, spacing_um: float | Sequence[float] | None = None,
                target_um: float = TARGET_SPACING_UM) -> np.ndarray:
    """(N, size, size, C) patches of `image` (H, W, C), one centred on each (x, y) pixel point, in order.

    With `spacing_um` (the image's um per pixel: one number, or (x, y)), the image is first
    resampled to `target_um` and the points mapped onto it; the points must lie inside the image
    as given. Raises ValueError naming the first point outside the image.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    points = as_points(points)
    height, width = patch_shape(size)
    is_inside = inside(points, height=image.shape[0], width=image.shape[1])
    if not is_inside.all():
        first = int(np.flatnonzero(~is_inside)[0])
        raise ValueError(f"point {first} at (x, y) = ({points[first, 0]:g}, {points[first, 1]:g}) lies outside "
                         f"the {image.shape[1]}x{image.shape[0]} image ({int((~is_inside).sum())} points outside)")
    if spacing_um is not None:
        image = resample_to_spacing(image, spacing_um, target_um)
        points = points_at_spacing(points, spacing_um, target_um)
    patches = np.zeros((len(points), height, width, image.shape[2]), dtype=image.dtype)
    for index, (column, row) in enumerate(centre_pixels(points)):
        patches[index] = window(image, top=int(row) - height // 2, left=int(column) - width // 2,
                                height=height, width=width)
    return patches


def fit_centred(images: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Centre-crop each axis of (..., H, W, C) that is too large and centre-pad with black each that is too small.

    An odd surplus leaves its extra row or column after the kept part, an odd shortfall puts its
    extra black row or column after the image. Returns `images` itself when it already fits.
    """
    image_height, image_width = images.shape[-3], images.shape[-2]
    if (image_height, image_width) == (height, width):
        return images

    def start(extent: int, wanted: int) -> int:
        return (extent - wanted) // 2 if extent >= wanted else -((wanted - extent) // 2)

    return window(images, top=start(image_height, height), left=start(image_width, width), height=height, width=width)


def spacing_pair(spacing_um: float | Sequence[float]) -> tuple[float, float]:
    """A spacing as (x, y) in um per pixel: one number for square pixels."""
    pair = (spacing_um, spacing_um) if np.isscalar(spacing_um) else tuple(spacing_um)
    if len(pair) != 2 or not all(np.isfinite(value) and value > 0 for value in pair):
        raise ValueError(f"spacing must be one or two positive numbers (um per pixel), got {spacing_um}")
    return float(pair[0]), float(pair[1])


def needs_resampling(spacing_um: float | Sequence[float]) -> bool:
    """Whether an image at `spacing_um` should be resampled before cropping.

    True when an axis lies outside NATIVE_SPACING_UM (40x, cut as it is) while both lie within
    PLAUSIBLE_SPACING_UM (a spacing beyond it is metadata nobody set, not a microscope's).
    """
    pair = spacing_pair(spacing_um)
    low, high = PLAUSIBLE_SPACING_UM
    if not all(low <= value <= high for value in pair):
        return False
    return not all(NATIVE_SPACING_UM[0] <= value <= NATIVE_SPACING_UM[1] for value in pair)


def points_at_spacing(points: np.ndarray, spacing_um: float | Sequence[float],
                      target_um: float = TARGET_SPACING_UM) -> np.ndarray:
    """Where (x, y) pixel points of an image at `spacing_um` lie after resample_to_spacing."""
    scale = np.array(spacing_pair(spacing_um)) / target_um
    return (as_points(points) + 0.5) * scale - 0.5


def resample_to_spacing(image: np.ndarray, spacing_um: float | Sequence[float],
                        target_um: float = TARGET_SPACING_UM) -> np.ndarray:
    """`image` (H, W, C) at `spacing_um` resampled to `target_um` per pixel: round(H * spacing_y / target) rows.

    Same dtype out as in (integers rounded and clipped to their range); the image itself when the
    spacing already is the target.
    """
    import SimpleITK as sitk  # only here, so that cropping alone needs numpy alone

    spacing = spacing_pair(spacing_um)
    if spacing == (target_um, target_um):
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * spacing[0] / target_um)), max(1, round(height * spacing[1] / target_um)))
    source = sitk.GetImageFromArray(image.astype(np.float32), isVector=True)
    source.SetSpacing(spacing)
    for axis, value in enumerate(spacing):
        blur = (target_um / value - 1.0) / 2.0  # in source pixels; positive only where the axis shrinks
        if blur > 0:
            source = sitk.RecursiveGaussian(source, blur * value, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis)
    origin = [(target_um - value) / 2.0 for value in spacing]  # outer edges of the two grids coincide
    resampled = sitk.Resample(source, size, sitk.Transform(), sitk.sitkLinear, origin, (target_um, target_um),
                              source.GetDirection(), 0.0, sitk.sitkVectorFloat32)
    pixels = sitk.GetArrayFromImage(resampled).reshape(size[1], size[0], image.shape[2])
    if np.issubdtype(image.dtype, np.integer):
        limits = np.iinfo(image.dtype)
        return np.clip(np.rint(pixels), limits.min, limits.max).astype(image.dtype)
    return pixels.astype(image.dtype)
