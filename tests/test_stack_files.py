"""inference/stack_files.py reads a stack without SimpleITK: it must give SimpleITK's pixels, or step aside.

SimpleITK stays the reference: every layout stack_files reads is written here (by SimpleITK, tifffile
or by hand) and read by both; every layout it does not read must come back as None, so that
images.read_stack hands it to SimpleITK as before.
"""

import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from inference import image_checks, images, stack_files

SHAPE = (3, 9, 7)  # pages, height, width: no two alike, so that a transposed read cannot pass


def pixels(dtype, channels: int, pages: int = SHAPE[0]) -> np.ndarray:
    """Seeded pixels over most of the dtype's range, shaped (pages, H, W[, channels])."""
    rng = np.random.default_rng(channels * 31 + pages)
    shape = (pages, *SHAPE[1:]) + ((channels,) if channels > 1 else ())
    if np.issubdtype(dtype, np.floating):
        return rng.uniform(-2.0, 2.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, endpoint=True).astype(dtype)


def sitk_pixels(path: Path) -> np.ndarray:
    """What SimpleITK reads, shaped as stack_files returns it: (N, H, W, C)."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        array = array[np.newaxis]
    return array[..., np.newaxis] if array.ndim == 3 else array


def assert_same_as_sitk(path: Path) -> None:
    ours, reference = stack_files.read_pages(path), sitk_pixels(path)
    assert ours is not None, "stack_files stepped aside from a layout it should read"
    assert ours.dtype == reference.dtype and ours.dtype.isnative
    np.testing.assert_array_equal(ours, reference)


# ---------------------------------------------------------------------------------------------
# MetaImage


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64,
                                   np.float32, np.float64])
def test_metaimage_stacks_read_as_simpleitk_reads_them(tmp_path, dtype, channels, compressed):
    path = tmp_path / "stack.mha"
    sitk.WriteImage(sitk.GetImageFromArray(pixels(dtype, channels), isVector=channels > 1), str(path),
                    useCompression=compressed)
    assert_same_as_sitk(path)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_single_page_metaimage(tmp_path, channels):
    path = tmp_path / "page.mha"
    sitk.WriteImage(sitk.GetImageFromArray(pixels(np.uint8, channels, pages=1)[0], isVector=channels > 1), str(path),
                    useCompression=True)
    assert_same_as_sitk(path)
    assert stack_files.read_pages(path).shape[0] == 1


def hand_written_metaimage(path: Path, fields: list[str], data: bytes) -> Path:
    path.write_bytes(("\n".join(fields) + "\nElementDataFile = LOCAL\n").encode() + data)
    return path


def test_big_endian_metaimage(tmp_path):
    values = pixels(np.uint16, 3)
    path = hand_written_metaimage(tmp_path / "msb.mha", [
        "ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = True",
        "DimSize = 7 9 3", "ElementNumberOfChannels = 3", "ElementType = MET_USHORT"], values.astype(">u2").tobytes())
    assert_same_as_sitk(path)
    np.testing.assert_array_equal(stack_files.read_pages(path), values)


def test_metaimage_data_in_several_zlib_streams(tmp_path):
    """MetaIO writes large data as consecutive zlib streams; every one of them is inflated."""
    raw = pixels(np.uint8, 3).tobytes()
    half = len(raw) // 2
    path = hand_written_metaimage(tmp_path / "streams.mha", [
        "ObjectType = Image", "NDims = 3", "BinaryData = True", "CompressedData = True",
        "DimSize = 7 9 3", "ElementNumberOfChannels = 3", "ElementType = MET_UCHAR"],
        zlib.compress(raw[:half]) + zlib.compress(raw[half:]))
    np.testing.assert_array_equal(stack_files.read_pages(path), pixels(np.uint8, 3))


def test_a_cut_compressed_metaimage_is_refused_by_the_reader_itself(tmp_path):
    """The reader inflates with image_checks' checks, so it never reshapes a half-inflated stream."""
    fields = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "CompressedData = True",
              "DimSize = 7 9 3", "ElementNumberOfChannels = 3", "ElementType = MET_UCHAR"]
    stream = zlib.compress(pixels(np.uint8, 3).tobytes())
    path = hand_written_metaimage(tmp_path / "cut.mha", fields, stream[:len(stream) // 2])
    with pytest.raises(image_checks.DamagedImage, match="truncated"):
        stack_files.read_pages(path)


def test_metaimage_layouts_left_to_simpleitk(tmp_path):
    ascii_data = hand_written_metaimage(tmp_path / "ascii.mha", [
        "ObjectType = Image", "NDims = 2", "BinaryData = False", "DimSize = 2 1", "ElementType = MET_UCHAR"], b"1 2\n")
    four_d = tmp_path / "four_d.mha"
    sitk.WriteImage(sitk.Image([2, 3, 4, 5], sitk.sitkUInt8), str(four_d))
    for path in (ascii_data, four_d):
        assert stack_files.read_pages(path) is None, path.name


# ---------------------------------------------------------------------------------------------
# TIFF


@pytest.mark.parametrize("compression", [None, "zlib", "adobe_deflate"])  # PackBits: SimpleITK writes it, below
@pytest.mark.parametrize("photometric,channels", [("rgb", 3), ("minisblack", 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_stacks_read_as_simpleitk_reads_them(tmp_path, compression, photometric, channels, dtype):
    path = tmp_path / "stack.tiff"
    tifffile.imwrite(path, pixels(dtype, channels), photometric=photometric, compression=compression)
    assert_same_as_sitk(path)


def test_a_full_size_stack_in_many_strips(tmp_path):
    path = tmp_path / "strips.tiff"
    values = np.random.default_rng(5).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    tifffile.imwrite(path, values, photometric="rgb", compression="zlib", rowsperstrip=8)
    assert_same_as_sitk(path)


def test_a_one_page_tiff(tmp_path):
    path = tmp_path / "single.tif"
    tifffile.imwrite(path, pixels(np.uint8, 3, pages=1)[0], photometric="rgb")
    assert_same_as_sitk(path)


@pytest.mark.parametrize("compressor", [None, "Deflate", "PackBits"])
@pytest.mark.parametrize("channels", [1, 3])
def test_simpleitk_written_stacks(tmp_path, compressor, channels):
    """The project's own sample stacks and many users' are written by SimpleITK (Deflate)."""
    path = tmp_path / "sitk.tiff"
    image = sitk.GetImageFromArray(pixels(np.uint8, channels), isVector=channels > 1)
    sitk.WriteImage(image, str(path), useCompression=compressor is not None, compressor=compressor or "")
    assert_same_as_sitk(path)


def tiff_layouts_left_to_simpleitk(tmp_path: Path) -> dict[str, Path]:
    values = pixels(np.uint8, 3)
    paths = {name: tmp_path / f"{name}.tiff" for name in
             ("lzw", "jpeg", "tiled", "separate", "palette", "rgba", "float", "reduced", "predictor", "sizes")}
    for name in ("lzw", "jpeg"):
        sitk.WriteImage(sitk.GetImageFromArray(values, isVector=True), str(paths[name]), useCompression=True,
                        compressor=name.upper())
    # SimpleITK (libtiff's RGBA interface) reads tiled RGB as RGBA: other pixels than the file's
    tifffile.imwrite(paths["tiled"], values.repeat(4, axis=1).repeat(4, axis=2), photometric="rgb", tile=(16, 16))
    tifffile.imwrite(paths["separate"], np.moveaxis(values, -1, 1), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(paths["palette"], values[..., 0], photometric="palette",
                     colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))
    tifffile.imwrite(paths["rgba"], np.concatenate([values, values[..., :1]], axis=-1), photometric="rgb",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(paths["float"], values.astype(np.float32), photometric="rgb")
    with tifffile.TiffWriter(paths["reduced"]) as writer:
        writer.write(values[0], photometric="rgb")
        writer.write(values[0, ::2, ::2], photometric="rgb", subfiletype=1)
    tifffile.imwrite(paths["predictor"], values, photometric="rgb", compression="zlib", predictor=True)
    with tifffile.TiffWriter(paths["sizes"]) as writer:
        writer.write(values[0], photometric="rgb")
        writer.write(values[0, :5], photometric="rgb")
    return paths


def test_tiff_layouts_left_to_simpleitk(tmp_path):
    for name, path in tiff_layouts_left_to_simpleitk(tmp_path).items():
        assert stack_files.read_pages(path) is None, name


def test_read_stack_still_reads_what_stack_files_leaves(tmp_path):
    """An LZW stack (tifffile cannot decode it without imagecodecs) is read by SimpleITK, pixels unchanged."""
    path = tmp_path / "lzw.tiff"
    values = pixels(np.uint8, 3)
    sitk.WriteImage(sitk.GetImageFromArray(values, isVector=True), str(path), useCompression=True, compressor="LZW")
    np.testing.assert_array_equal(images.read_stack(path=path), values)


def test_a_tifffile_failure_is_logged_and_left_to_simpleitk(tmp_path, monkeypatch, capsys):
    path = tmp_path / "stack.tiff"
    tifffile.imwrite(path, pixels(np.uint8, 3), photometric="rgb")

    def fails(self, *args, **kwargs):
        raise ValueError("a decoder's complaint")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", fails)
    assert stack_files.read_pages(path) is None
    logged = capsys.readouterr().err
    assert "tifffile could not read stack.tiff (a decoder's complaint); reading it with SimpleITK" in logged
    monkeypatch.undo()
    np.testing.assert_array_equal(images.read_stack(path=path), pixels(np.uint8, 3))


def test_the_tiff_codes_are_tifffiles():
    """stack_files names TIFF codes as integers (tifffile is imported only for a TIFF); they must be tifffile's."""
    assert stack_files.TIFF_COMPRESSIONS == {tifffile.COMPRESSION.NONE, tifffile.COMPRESSION.DEFLATE,
                                             tifffile.COMPRESSION.ADOBE_DEFLATE, tifffile.COMPRESSION.PACKBITS}
    assert stack_files.TIFF_SAMPLES == {tifffile.PHOTOMETRIC.MINISBLACK: 1, tifffile.PHOTOMETRIC.RGB: 3}
    assert (stack_files.UNSIGNED, stack_files.CONTIGUOUS, stack_files.NO_PREDICTOR) == (
        tifffile.SAMPLEFORMAT.UINT, tifffile.PLANARCONFIG.CONTIG, tifffile.PREDICTOR.NONE)
