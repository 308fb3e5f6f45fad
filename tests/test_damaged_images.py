"""Damaged image files never yield a partial answer: one clear error line, no output (image_checks.py).

Grand-challenge fails a whole evaluation when one result has fewer entries than its ground truth.
Each test damages a file it writes itself the way files get damaged (cut short, a page link
zeroed, pointed past the end, into pixel data or back at an earlier page, compressed data
overwritten) and runs process.py in a subprocess with test_process's time limit, since some damage
makes SimpleITK loop for ever.
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from inference import image_checks
from tests.conftest import STACK_SLUG, only_file, platform_file_name
from tests.test_points import ROI_FOLDER, image_socket, multiple_points, points_socket, roi_image, to_mm
from tests.test_process import OUTPUT_NAME, assert_failed, brightness_pages, run_process

REPO = Path(__file__).resolve().parents[1]
PAGES = brightness_pages(np.linspace(40, 220, 16).astype(int))


def next_link_position(path: Path, page: int) -> int:
    """Byte position of the 4-byte offset of the page after `page` (classic little-endian TIFF)."""
    with tifffile.TiffFile(path) as tiff:
        offset = tiff.pages[page].offset
    count = struct.unpack_from("<H", path.read_bytes(), offset)[0]
    return offset + 2 + 12 * count


def set_link(path: Path, page: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[next_link_position(path, page):next_link_position(path, page) + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))


def page_offset(path: Path, page: int) -> int:
    with tifffile.TiffFile(path) as tiff:
        return tiff.pages[page].offset


def overwrite_pixel_data(path: Path, page: int) -> None:
    with tifffile.TiffFile(path) as tiff:
        start = tiff.pages[page].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[start + 10:start + 60] = b"\xff" * 50
    path.write_bytes(bytes(data))


def cut(path: Path, fraction: float | None = None, at: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:at if at is not None else int(len(data) * fraction)])


TIFF_DAMAGE = {
    # name: (what to do to a 16-page Deflate stack, what the error line must mention)
    "cut at 90%": (lambda p: cut(p, 0.9), "truncated"),
    "cut at 50%": (lambda p: cut(p, 0.5), "truncated"),
    "cut just before page 10": (lambda p: cut(p, at=page_offset(p, 10)), "past the end"),
    "link after page 5 zeroed": (lambda p: set_link(p, 5, 0), "not linked into the page chain of 6 pages"),
    "link after page 5 past the end": (lambda p: set_link(p, 5, p.stat().st_size + 1000), "page 6 would start"),
    "link after page 5 into pixel data": (lambda p: set_link(p, 5, page_offset(p, 7) + 30), "damaged image"),
    "link after page 5 back to page 2": (lambda p: set_link(p, 5, page_offset(p, 2)), "loops back to page 2"),
    "compressed pixels of page 8 overwritten": (lambda p: overwrite_pixel_data(p, 8), "cannot read image"),
}


@pytest.mark.parametrize("damage", list(TIFF_DAMAGE))
def test_damaged_tiff_stack(make_case, fake_model_dir, tmp_path, damage):
    input_dir = make_case(PAGES, name="stack.tiff", compression="deflate")
    damage_file, mentions = TIFF_DAMAGE[damage]
    damage_file(only_file(input_dir / "images" / STACK_SLUG))
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, fake_model_dir), output_dir, mentions)


def write_mha(path: Path, pages: np.ndarray, *, compressed: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(pages, isVector=True), str(path), useCompression=compressed)
    return path


def overwrite_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 50] = b"\xff" * 50
    path.write_bytes(bytes(data))


def point_data_elsewhere(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"ElementDataFile = LOCAL", b"ElementDataFile = ../../x.raw"))


def claim_one_page_fewer(path: Path) -> None:
    """The header's last DimSize (the page count) lowered by one: the pixel data then hold more than it promises."""
    data = path.read_bytes()
    start = data.index(b"DimSize = ")
    end = data.index(b"\n", start)
    sizes = data[start + len(b"DimSize = "):end].split()
    sizes[-1] = str(int(sizes[-1]) - 1).encode()
    path.write_bytes(data[:start] + b"DimSize = " + b" ".join(sizes) + data[end:])


MHA_DAMAGE = {
    # name: (compressed?, what to do to a 16-page .mha, what the error line must mention)
    "compressed, cut at 90%": (True, lambda p: cut(p, 0.9), "truncated"),
    "compressed, data overwritten": (True, overwrite_middle, "cannot be decoded"),
    "compressed, one page more than the header says": (True, claim_one_page_fewer, "hold more than"),
    "uncompressed, cut at 90%": (False, lambda p: cut(p, 0.9), "header promises"),
    "header cut off": (False, lambda p: cut(p, at=60), "without an ElementDataFile line"),
    "pixels in another file": (False, point_data_elsewhere, "pixels lie in another file"),
}


@pytest.mark.parametrize("damage", list(MHA_DAMAGE))
def test_damaged_mha_stack(make_case, fake_model_dir, tmp_path, damage):
    compressed, damage_file, mentions = MHA_DAMAGE[damage]
    input_dir = make_case(PAGES[:2], name="stack.mha")
    path = write_mha(only_file(input_dir / "images" / STACK_SLUG), PAGES, compressed=compressed)
    damage_file(path)
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, fake_model_dir), output_dir, mentions)


@pytest.mark.parametrize("damage", ["cut", "overwritten"])
def test_damaged_roi_image(fake_model_dir, tmp_path, damage):
    """The points interface's whole image: the same rule."""
    input_dir = tmp_path / "input"
    image = roi_image()
    path = input_dir / ROI_FOLDER / platform_file_name(".mha")
    path.parent.mkdir(parents=True)
    image_itk = sitk.GetImageFromArray(image, isVector=True)  # 2-D, as a region of interest is
    image_itk.SetSpacing((0.00025, 0.00025))
    sitk.WriteImage(image_itk, str(path), useCompression=True)
    cut(path, 0.8) if damage == "cut" else overwrite_middle(path)
    (input_dir / "mitotic-figures.json").write_text(json.dumps(multiple_points(to_mm([(200, 150)]))))
    sockets = [image_socket("roi.mha"), points_socket()]
    (input_dir / "inputs.json").write_text(json.dumps(sockets))
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, fake_model_dir), output_dir, "damaged image")


def test_a_tiff_roi_with_a_second_page_behind_a_zeroed_link(fake_model_dir, tmp_path):
    input_dir = tmp_path / "input"
    path = input_dir / ROI_FOLDER / platform_file_name(".tif")
    path.parent.mkdir(parents=True)
    tifffile.imwrite(path, np.stack([roi_image(), roi_image()]), photometric="rgb", metadata=None)
    set_link(path, 0, 0)
    (input_dir / "mitotic-figures.json").write_text(json.dumps(multiple_points(to_mm([(200, 150)]))))
    (input_dir / "inputs.json").write_text(json.dumps([image_socket("roi.tif"), points_socket()]))
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, fake_model_dir), output_dir, "not linked into the page chain")


def claim_size(path: Path, width: int, height: int) -> None:
    """Rewrite the first page's width and length tags in place (the pixel data stay as small as they were)."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tiff:
        tags = tiff.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tags[name]
            fmt = "<H" if tag.dtype == tifffile.DATATYPE.SHORT else "<I"
            data[tag.valueoffset:tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


def test_a_file_claiming_a_vast_image_is_refused_before_decoding(make_case, fake_model_dir, tmp_path):
    """A few KB that claim 60,000 x 60,000 RGB pixels (10.8 GB) must not exhaust the container's memory."""
    input_dir = make_case(PAGES[:1], name="stack.tiff", compression="deflate")
    claim_size(only_file(input_dir / "images" / STACK_SLUG), 60000, 60000)
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, fake_model_dir), output_dir, "10.8 GB (1 TIFF pages)")


def test_a_metaimage_claiming_a_vast_image_is_refused_before_inflating(make_case, fake_model_dir, tmp_path):
    input_dir = make_case(PAGES[:1], name="stack.mha")
    path = only_file(input_dir / "images" / STACK_SLUG)
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 20000 20000 10\nElementNumberOfChannels = 3\n"
                     b"ElementType = MET_UCHAR\nCompressedData = True\nElementDataFile = LOCAL\n"
                     + zlib.compress(bytes(1 << 20)))
    output_dir = tmp_path / "output"
    assert_failed(run_process(input_dir, output_dir, fake_model_dir), output_dir, "more than the 2 GiB")


# ---------------------------------------------------------------------------------------------
# image_checks on sound files: every page counted, nothing flagged


@pytest.mark.parametrize("options", [
    {"compression": "deflate"}, {}, {"bigtiff": True}, {"tile": (64, 64)}, {"byteorder": ">"},
    {"rowsperstrip": 16, "compression": "deflate"},
], ids=["deflate", "uncompressed", "bigtiff", "tiled", "big-endian", "several strips"])
def test_sound_tiffs_are_counted(tmp_path, options):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, PAGES, photometric="rgb", metadata=None, **options)
    assert image_checks.expected_pages(path) == 16
    assert len(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))) == 16


def test_reduced_resolution_pages_are_not_pages(tmp_path):
    """A pyramid level or thumbnail (NewSubfileType bit 0) is not a page of the stack."""
    path = tmp_path / "roi.tif"
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(roi_image(), photometric="rgb", metadata=None)
        tiff.write(roi_image()[::2, ::2], photometric="rgb", metadata=None, subfiletype=1)
    assert image_checks.expected_pages(path) == 1


@pytest.mark.parametrize("compressed", [True, False])
def test_sound_mha_files_are_counted(tmp_path, compressed):
    assert image_checks.expected_pages(write_mha(tmp_path / "s.mha", PAGES, compressed=compressed)) == 16
    single = tmp_path / "one.mha"
    sitk.WriteImage(sitk.GetImageFromArray(PAGES[0], isVector=True), str(single), useCompression=compressed)
    assert image_checks.expected_pages(single) == 1


def test_other_formats_are_left_to_simpleitk(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    assert image_checks.expected_pages(path) is None


def test_the_committed_sample_cases_are_sound():
    for path in sorted((REPO / "test").glob("**/images/*/*")):
        assert image_checks.expected_pages(path) in (1, 16), path


def test_a_sound_stack_gives_every_page(make_case, fake_model_dir, tmp_path):
    input_dir = make_case(PAGES, name="stack.tiff", compression="deflate")
    output_dir = tmp_path / "output"
    result = run_process(input_dir, output_dir, fake_model_dir)
    assert result.returncode == 0, result.stderr
    assert len(json.loads((output_dir / OUTPUT_NAME).read_text())) == 16
