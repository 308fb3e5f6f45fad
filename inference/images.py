"""Reading a stack of pages or a whole region of interest, as the container takes them.

Pages (and whole images, for their pixel types and channels) are taken as they come, with the
adjustments process.py's docstring tabulates, each one logged. A file whose structure says it holds
more pages than are decoded is refused (image_checks.py): an answer for fewer pages would fail the
whole evaluation. A stack in the layouts stack_files.py reads is read there; everything else, and
every region of interest (whose spacing and direction matter), with SimpleITK, imported only then:
it is the slowest import of process.py's start-up after numpy.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inference import crops, image_checks, stack_files
from inference.errors import InputError, log

if TYPE_CHECKING:
    import SimpleITK as sitk


def sitk_reason(error: RuntimeError) -> str:
    """The useful last line of a SimpleITK exception, without its source-file preamble."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    for marker in ("sitk::ERROR: ", "ERROR: "):
        if marker in reason:
            reason = reason.split(marker, 1)[1]
            break
    return re.sub(r"^\w+\(0x[0-9a-f]+\): ", "", reason)  # "TIFFImageIO(0x55d0...): " says nothing


def pixels_as_uint8(pages: np.ndarray, *, path: Path) -> np.ndarray:
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


def checked_pages(path: Path) -> int | None:
    """The pages `path`'s structure says it holds (image_checks); damage ends here as an InputError,
    before a decoder can hang on it or return fewer pages."""
    try:
        return image_checks.expected_pages(path)
    except image_checks.DamagedImage as error:
        raise InputError(f"damaged image {path}: {error}") from error
    except OSError as error:
        raise InputError(f"cannot read image {path}: {error.strerror}") from error


def sitk_image(path: Path) -> "sitk.Image":
    """The image SimpleITK reads from `path` (its structure already checked)."""
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read image {path}: {sitk_reason(error)}") from error


def sitk_stack(path: Path) -> np.ndarray:
    """A stack's pages as (N, H, W, C), read by SimpleITK: the layouts stack_files does not read."""
    import SimpleITK as sitk

    image = sitk_image(path)
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path}: a {image.GetDimension()}-D image; expected pages of a 2-D or 3-D stack")
    pages = sitk.GetArrayFromImage(image)  # (N, H, W[, C]) or (H, W[, C]) for a single page
    if image.GetDimension() == 2:
        pages = pages[np.newaxis]
    return pages[..., np.newaxis] if pages.ndim == 3 else pages


def read_stack(*, path: Path) -> np.ndarray:
    """Every page of a stack as (N, H, W, 3) uint8, in page order; all the pages the file holds, or an error."""
    expected = checked_pages(path)
    pages = stack_files.read_pages(path)
    if pages is None:
        pages = sitk_stack(path)
    if pages.size == 0:
        raise InputError(f"{path}: the image has no pages (shape {pages.shape[:3]})")
    if expected is not None and len(pages) != expected:
        raise InputError(f"damaged image {path}: {len(pages)} pages decoded of the {expected} it holds "
                         "(an answer for fewer pages would fail the whole evaluation)")
    return to_rgb(pixels_as_uint8(pages, path=path), path=path)


def fit_pages(pages: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Centre-crop each axis that is too large and centre-pad with black each that is too small."""
    if pages.shape[1:3] != (height, width):
        log(f"pages of {pages.shape[1]}x{pages.shape[2]} centre-cropped/padded to {height}x{width}")
    return crops.fit_centred(pages, height=height, width=width)


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
    import SimpleITK as sitk

    expected = checked_pages(path)
    image = sitk_image(path)
    if expected not in (None, 1):
        raise InputError(f"{path}: a stack of {expected} pages; expected one 2-D region of interest")
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
    return to_rgb(pixels_as_uint8(pixels[np.newaxis], path=path), path=path)[0], geometry
