"""A stack's pages read without SimpleITK, for the file layouts the platform and common writers make.

SimpleITK is the slowest import of process.py's start-up after numpy, and the largest library in
memory (benchmarks/startup.py; docs/performance.md), and a stack needs nothing SimpleITK adds to its
pixels (no spacing, origin or direction). So the layouts a stack usually comes in are read here:

- a MetaImage (.mha) holding its own binary pixels (ElementDataFile = LOCAL), raw or zlib-compressed,
  of one of MetaIO's scalar element types, in either byte order: what grand-challenge writes when it
  converts an upload (with SimpleITK's writer), read with numpy from the header image_checks parses;
- a TIFF whose pages are all full-resolution, of one size, in strips (not tiles), grey or RGB, 8 or 16
  bit unsigned, interleaved, top-left oriented, uncompressed, Deflate or PackBits: read with tifffile.

tifffile is imported only for a TIFF (its import costs tens of milliseconds that an MHA stack need
not pay). `read_pages` returns None for anything else (LZW, JPEG, tiles, palette or separate planes,
a reduced page, ASCII MetaImage data, ...) and images.py reads that with SimpleITK, as before. Both
readers must give the same pixels; tests/test_stack_files.py holds them to it over every layout read
here. The file's structure has been checked by image_checks before this runs.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inference import image_checks
from inference.errors import log, one_line

if TYPE_CHECKING:
    import tifffile

# TIFF 6.0 codes, as tifffile's enums hold them (tifffile is imported only when a TIFF comes)
TIFF_COMPRESSIONS = {1, 8, 32946, 32773}  # none, Deflate, Adobe Deflate, PackBits: decoded without imagecodecs
TIFF_SAMPLES = {1: 1, 2: 3}  # photometric MinIsBlack: 1 sample per pixel, RGB: 3
UNSIGNED, CONTIGUOUS, NO_PREDICTOR = 1, 1, 1  # SampleFormat, PlanarConfiguration, Predictor
ORIENTATION, FILL_ORDER = 274, 266  # TIFF tags: both must be absent or 1 (top-left rows, most significant bit first)


def read_pages(path: Path) -> np.ndarray | None:
    """The pages of a stack as (N, H, W, C), pixels as stored, or None when SimpleITK must read the file."""
    data = image_checks.mapped(Path(path))
    if image_checks.is_tiff(data):
        return tiff_pages(path)
    if image_checks.is_metaimage(data):
        return metaimage_pixels(data)
    return None


def metaimage_pixels(data: bytes) -> np.ndarray | None:
    """(N, H, W, C) pixels of a 2-D or 3-D MetaImage holding its own binary data, or None for other layouts."""
    fields, start = image_checks.metaimage_header(data)
    code = image_checks.METAIMAGE_ELEMENT_CODES.get(fields.get("ElementType", ""))
    if (code is None or fields.get("ElementDataFile") != "LOCAL" or "HeaderSize" in fields
            or fields.get("ObjectType", "Image") != "Image" or fields.get("BinaryData", "True").lower() != "true"):
        return None
    sizes = [int(value) for value in fields["DimSize"].split()]  # x, y[, z]: image_checks has read them
    if len(sizes) not in (2, 3):
        return None
    big_endian = any(fields.get(key, "").lower() == "true" for key in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB"))
    pixels = memoryview(data)[start:]
    if fields.get("CompressedData", "False").lower() == "true":
        pixels = b"".join(image_checks.inflated_chunks(pixels))
    channels = int(fields.get("ElementNumberOfChannels", "1"))
    width, height, pages = sizes[0], sizes[1], sizes[2] if len(sizes) == 3 else 1
    stored = np.dtype((">" if big_endian else "<") + code)
    array = np.frombuffer(pixels, stored).reshape(pages, height, width, channels)
    return array.astype(stored.newbyteorder("="))  # a native-order copy, off the file's map


def tiff_pages(path: Path) -> np.ndarray | None:
    """(N, H, W, C) pixels of a TIFF in a layout read here, or None; a failure of tifffile's is logged, then None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            pages = list(tiff.pages)
            if not all(takes(page) for page in pages):
                return None
            arrays = [page.asarray() for page in pages]
    except Exception as error:  # tifffile refused a file image_checks passed: SimpleITK decides
        log(f"tifffile could not read {path.name} ({one_line(error)}); reading it with SimpleITK")
        return None
    if len({array.shape for array in arrays}) != 1:
        return None  # pages of several sizes: SimpleITK's rules for them apply
    stack = np.stack(arrays)
    return stack[..., np.newaxis] if stack.ndim == 3 else stack


def takes(page: "tifffile.TiffPage") -> bool:
    """Whether a TIFF page's layout is one tiff_pages reads the way SimpleITK (libtiff) does."""
    tags = page.tags
    return (not page.is_tiled  # SimpleITK reads tiled RGB through libtiff's RGBA interface, as 4 channels
            and page.compression in TIFF_COMPRESSIONS
            and page.predictor == NO_PREDICTOR
            and TIFF_SAMPLES.get(page.photometric) == page.samplesperpixel
            and (page.samplesperpixel == 1 or page.planarconfig == CONTIGUOUS)
            and page.bitspersample in (8, 16) and page.sampleformat == UNSIGNED
            and not page.subfiletype & image_checks.REDUCED_RESOLUTION
            and all(tags.valueof(tag, 1) == 1 for tag in (ORIENTATION, FILL_ORDER)))
