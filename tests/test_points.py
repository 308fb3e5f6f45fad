"""Tests of process.py's second interface: a whole region-of-interest image plus candidate points.

Most cases call `process.main` in this process (fast); two run `python process.py` in a subprocess as
the container does. The model is tests/fake_model.py's graph, P(atypical) = f(mean pixel value), so
each probability is checked against crops cut by hand (numpy padding and slicing, not crops.py).
"""

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

import process
from inference import crops
from inference.images import Geometry
from inference.model import BATCH_SIZE
from scripts.compare_outputs import points_contract_problems
from tests.conftest import only_file, platform_file_name
from tests.fake_model import fake_probability, write_fake_model

REPO = Path(__file__).resolve().parents[1]
OUTPUT = "atypical-mitotic-figures.json"
ROI_SLUG = "histopathology-region-of-interest-cropout"
ROI_FOLDER = "images/histopathology-roi-cropout"
SPACING_MM = 0.00025


def roi_image(height: int = 300, width: int = 400) -> np.ndarray:
    """Brightness rising to the right and down: crops at different points have different means."""
    rows, columns = np.mgrid[0:height, 0:width]
    grey = 60 + 190 * (0.7 * columns / width + 0.3 * rows / height)
    noise = np.random.default_rng(0).integers(-10, 11, (height, width))
    channel = np.clip(grey + noise, 0, 255)
    return np.stack([channel, channel * 0.95, channel * 0.9], axis=-1).astype(np.uint8)


def hand_crop(image: np.ndarray, column: int, row: int, size: int = 128) -> np.ndarray:
    padded = np.pad(image, ((size, size), (size, size), (0, 0)))
    return padded[row + size // 2:row + size // 2 + size, column + size // 2:column + size // 2 + size]


def image_socket(name: str | None = "roi.tif") -> dict:
    return {"file": None, "image": {"name": name}, "value": None,
            "interface": {"slug": ROI_SLUG, "kind": "Image", "super_kind": "Image",
                          "relative_path": ROI_FOLDER, "example_value": None}}


def points_socket(value: dict | None = None) -> dict:
    return {"file": None if value is not None else "https://example.org/mitotic-figures.json", "image": None,
            "value": value,
            "interface": {"slug": "mitotic-figures", "kind": "Multiple points", "super_kind": "File",
                          "relative_path": "mitotic-figures.json", "example_value": None}}


def csv_socket() -> dict:
    return {"file": "https://example.org/candidate-points.csv", "image": None, "value": None,
            "interface": {"slug": "candidate-points", "kind": "CSV file", "super_kind": "File",
                          "relative_path": "candidate-points.csv", "example_value": None}}


def multiple_points(points_mm, **extra) -> dict:
    """What a Track 1 container writes."""
    return {"name": "Points of interest", "type": "Multiple points",
            "points": [{"name": "mitotic figure", "point": list(point), "probability": 0.9} for point in points_mm],
            "version": {"major": 1, "minor": 0}, **extra}


def write_roi(path: Path, image: np.ndarray, *, spacing_mm=SPACING_MM, origin_mm=(0.0, 0.0)) -> Path:
    """.tif with a resolution tag (origin 0 only), or .mha with spacing and origin."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mha":
        itk_image = sitk.GetImageFromArray(image, isVector=True)
        itk_image.SetSpacing((spacing_mm, spacing_mm))
        itk_image.SetOrigin(origin_mm)
        sitk.WriteImage(itk_image, str(path))
    else:
        assert origin_mm == (0.0, 0.0)
        resolution = {} if spacing_mm is None else {"resolution": (10 / spacing_mm,) * 2, "resolutionunit": "CENTIMETER"}
        tifffile.imwrite(path, image, photometric="rgb", metadata=None, **resolution)
    return path


@pytest.fixture
def make_points_case(tmp_path):
    """Factory: an input folder with the image, the points as a file / inline value / CSV, and inputs.json."""

    def make(image: np.ndarray, points, *, form: str = "file", name: str = "roi.tif", on_disk: str | None = None,
             inputs_json: bool = True, **image_options) -> Path:
        """`name` is the upload name in inputs.json; the image lies under `on_disk`, by default a UUID as on
        grand-challenge."""
        input_dir = tmp_path / "input"
        shutil.rmtree(input_dir, ignore_errors=True)  # a second case replaces the first
        write_roi(input_dir / ROI_FOLDER / (on_disk or platform_file_name(Path(name).suffix)), image, **image_options)
        if form == "csv":
            (input_dir / "candidate-points.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in points))
            sockets = [image_socket(name), csv_socket()]
        elif form == "inline":
            sockets = [image_socket(name), points_socket(points)]
        else:
            (input_dir / "mitotic-figures.json").write_text(json.dumps(points, indent=4))
            sockets = [image_socket(name), points_socket()]
        if inputs_json:
            (input_dir / "inputs.json").write_text(json.dumps(sockets, indent=4))
        return input_dir

    return make


def roi_file(input_dir: Path) -> Path:
    """The one image of a case's region-of-interest socket folder."""
    return only_file(input_dir / ROI_FOLDER)


def run_main(input_dir: Path, output_dir: Path, model_dir: Path, capsys) -> tuple[int, str]:
    code = process.main(["--input", str(input_dir), "--output", str(output_dir), "--model", str(model_dir)])
    return code, capsys.readouterr().err


def read_output(input_dir: Path, tmp_path: Path, model_dir: Path, capsys) -> tuple[dict, str]:
    output_dir = tmp_path / "output"
    code, stderr = run_main(input_dir, output_dir, model_dir, capsys)
    assert code == 0, stderr
    assert sorted(path.name for path in output_dir.iterdir()) == [OUTPUT]
    return json.loads((output_dir / OUTPUT).read_text()), stderr


def assert_failed(input_dir: Path, tmp_path: Path, model_dir: Path, capsys, mentions: str) -> None:
    """Exit code 1, one `error:` line naming the culprit, nothing in the output folder."""
    output_dir = tmp_path / "output"
    code, stderr = run_main(input_dir, output_dir, model_dir, capsys)
    assert code == 1
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr
    assert mentions in error_lines[0], error_lines[0]
    assert not output_dir.exists() or list(output_dir.iterdir()) == []


IMAGE = roi_image()
# (x, y) pixels: interior, non-integer, near each edge and in a corner (black-padded crops), in no order of brightness
PIXELS = [(200.0, 150.0), (350.3, 40.6), (5.0, 150.0), (399.0, 299.0), (120.7, 250.2), (0.0, 0.0), (390.0, 10.0)]


def expected_probabilities(image: np.ndarray, pixels) -> np.ndarray:
    patches = np.stack([hand_crop(image, int(np.floor(x + 0.5)), int(np.floor(y + 0.5))) for x, y in pixels])
    return fake_probability(patches)


def to_mm(pixels, origin=(0.0, 0.0), spacing=SPACING_MM) -> list[list[float]]:
    return [[origin[0] + x * spacing, origin[1] + y * spacing, 0.0] for x, y in pixels]


# ---------------------------------------------------------------------------------------------
# output contract, end to end


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_output_contract_in_a_subprocess(make_points_case, tmp_path, threshold):
    model_dir = write_fake_model(tmp_path / "model", threshold=threshold)
    points_mm = to_mm(PIXELS)
    input_dir = make_points_case(IMAGE, multiple_points(points_mm))
    output_dir = tmp_path / "nested" / "output"
    result = subprocess.run([sys.executable, str(REPO / "process.py"), "--input", str(input_dir),
                             "--output", str(output_dir), "--model", str(model_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == [OUTPUT]
    raw = (output_dir / OUTPUT).read_text()
    output = json.loads(raw)
    assert points_contract_problems(output, label="output") == []
    assert set(output) == {"type", "points", "version"}
    assert output["type"] == "Multiple points" and output["version"] == {"major": 1, "minor": 0}
    assert [item["point"] for item in output["points"]] == points_mm  # every point, in order, as given
    probabilities = np.array([item["probability"] for item in output["points"]])
    assert all(type(item["probability"]) is float for item in output["points"])
    np.testing.assert_allclose(probabilities, expected_probabilities(IMAGE, PIXELS), atol=1e-6)
    names = [item["name"] for item in output["points"]]
    assert names == [("atypical" if p >= threshold else "normal") + " mitotic figure" for p in probabilities]
    assert set(names) == {"atypical mitotic figure", "normal mitotic figure"}
    assert not re.search(r'"probability":\s*-?\d+\s*[,}\n]', raw), "a probability written as a JSON integer"
    assert all(line.startswith("process: ") for line in result.stderr.splitlines()), result.stderr


def test_the_committed_sample_case_runs(fake_model_dir, tmp_path):
    output_dir = tmp_path / "output"
    result = subprocess.run([sys.executable, str(REPO / "process.py"), "--input", str(REPO / "test" / "points" / "input"),
                             "--output", str(output_dir), "--model", str(fake_model_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    output = json.loads((output_dir / OUTPUT).read_text())
    given = json.loads((REPO / "test" / "points" / "input" / "mitotic-figures.json").read_text())
    assert [item["point"] for item in output["points"]] == [item["point"] for item in given["points"]]


# ---------------------------------------------------------------------------------------------
# where the points come from


def test_inline_value_and_file_give_the_same_output(make_points_case, fake_model_dir, tmp_path, capsys):
    points = multiple_points(to_mm(PIXELS[:3]))
    from_file, _ = read_output(make_points_case(IMAGE, points, form="file"), tmp_path, fake_model_dir, capsys)
    from_value, stderr = read_output(make_points_case(IMAGE, points, form="inline"), tmp_path, fake_model_dir, capsys)
    assert from_value == from_file
    assert "from inputs.json socket mitotic-figures" in stderr


def test_inline_value_wins_over_a_file(make_points_case, fake_model_dir, tmp_path, capsys):
    input_dir = make_points_case(IMAGE, multiple_points(to_mm(PIXELS[:2])), form="inline")
    (input_dir / "mitotic-figures.json").write_text("not read")
    output, _ = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    assert len(output["points"]) == 2


def test_csv_of_pixels(make_points_case, fake_model_dir, tmp_path, capsys):
    input_dir = make_points_case(IMAGE, PIXELS, form="csv", name="roi.mha", origin_mm=(1.5, -2.0))
    output, stderr = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    assert "7 points (pixels)" in stderr
    np.testing.assert_allclose([item["point"] for item in output["points"]], to_mm(PIXELS, origin=(1.5, -2.0)), atol=1e-12)
    np.testing.assert_allclose([item["probability"] for item in output["points"]],
                               expected_probabilities(IMAGE, PIXELS), atol=1e-6)


def test_csv_header_extra_columns_blank_lines_and_bom(make_points_case, fake_model_dir, tmp_path, capsys):
    input_dir = make_points_case(IMAGE, [], form="csv")
    (input_dir / "candidate-points.csv").write_text("\ufeffid, Y ,score, X\n1,150,0.9,200\n\n2,40.6,0.5,350.3\n")
    output, _ = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    np.testing.assert_allclose([item["probability"] for item in output["points"]],
                               expected_probabilities(IMAGE, PIXELS[:2]), atol=1e-6)


def test_mm_with_a_non_zero_origin(make_points_case, fake_model_dir, tmp_path, capsys):
    origin = (12.5, 3.25)
    input_dir = make_points_case(IMAGE, multiple_points(to_mm(PIXELS, origin=origin)), name="roi.mha", origin_mm=origin)
    output, _ = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    np.testing.assert_allclose([item["probability"] for item in output["points"]],
                               expected_probabilities(IMAGE, PIXELS), atol=1e-6)


def test_geometry_round_trip_with_origin_and_direction():
    flipped = Geometry(spacing=np.array([0.00025, 0.0005]), origin=np.array([1.0, -2.0]),
                               direction=np.array([[-1.0, 0.0], [0.0, 1.0]]))
    pixels = np.array([[0.0, 0.0], [10.0, 20.0], [399.0, 299.0]])
    mm = flipped.to_mm(pixels)
    np.testing.assert_allclose(mm[1], [1.0 - 10 * 0.00025, -2.0 + 20 * 0.0005])
    np.testing.assert_allclose(flipped.to_pixels(mm), pixels, atol=1e-9)
    plain = Geometry(spacing=np.array([0.00025, 0.00025]), origin=np.array([1.5, -2.0]), direction=np.eye(2))
    np.testing.assert_allclose(plain.to_pixels(np.array([[1.5 + 0.025, -2.0 + 0.0125]])), [[100.0, 50.0]])
    assert plain.to_pixels(np.zeros((0, 2))).shape == (0, 2)


def test_track1_reference_spelling_is_read(make_points_case, fake_model_dir, tmp_path, capsys):
    points = multiple_points(to_mm(PIXELS[:2]))
    points["type"] = "Mulitple points"  # what the official Track 1 reference container writes
    output, stderr = read_output(make_points_case(IMAGE, points), tmp_path, fake_model_dir, capsys)
    assert len(output["points"]) == 2 and "Track 1 reference" in stderr


@pytest.mark.parametrize("on_disk", [None, "roi.tif"], ids=["platform UUID name", "hand-named"])
def test_the_image_found_whatever_its_name(make_points_case, fake_model_dir, tmp_path, capsys, on_disk):
    input_dir = make_points_case(IMAGE, multiple_points(to_mm(PIXELS[:3])), name="roi.tif", on_disk=on_disk)
    output, stderr = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    probabilities = [item["probability"] for item in output["points"]]
    np.testing.assert_allclose(probabilities, expected_probabilities(IMAGE, PIXELS[:3]), atol=1e-6)
    assert ("uploaded as 'roi.tif', on disk as" in stderr) == (on_disk is None)


def test_without_inputs_json_the_only_image_and_its_points_file(make_points_case, fake_model_dir, tmp_path, capsys):
    input_dir = make_points_case(IMAGE, multiple_points(to_mm(PIXELS[:3])), inputs_json=False)
    output, stderr = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    assert len(output["points"]) == 3 and "no inputs.json" in stderr


def test_other_sockets_are_ignored(make_points_case, fake_model_dir, tmp_path, capsys):
    input_dir = make_points_case(IMAGE, multiple_points(to_mm(PIXELS[:2])))
    sockets = json.loads((input_dir / "inputs.json").read_text())
    other = {"interface": {"slug": "some-other-socket", "relative_path": "other.json"}, "value": 1}
    (input_dir / "inputs.json").write_text(json.dumps([other, *reversed(sockets)]))
    output, _ = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    assert len(output["points"]) == 2


# ---------------------------------------------------------------------------------------------
# points and pixels that are handled


def test_no_points_is_a_valid_empty_output(make_points_case, fake_model_dir, tmp_path, capsys):
    output, _ = read_output(make_points_case(IMAGE, multiple_points([])), tmp_path, fake_model_dir, capsys)
    assert output == {"type": "Multiple points", "points": [], "version": {"major": 1, "minor": 0}}


def test_points_near_the_edge_get_black_padded_crops(make_points_case, fake_model_dir, tmp_path, capsys):
    edge = [(-0.5, 100.0), (399.49, 299.49), (0.0, 0.0)]  # on the image, however close to its border
    output, _ = read_output(make_points_case(IMAGE, multiple_points(to_mm(edge))), tmp_path, fake_model_dir, capsys)
    np.testing.assert_allclose([item["probability"] for item in output["points"]],
                               expected_probabilities(IMAGE, [(0, 100), (399, 299), (0, 0)]), atol=1e-6)


def test_more_points_than_one_batch(make_points_case, fake_model_dir, tmp_path, capsys):
    pixels = [(float(x), float(y)) for x in range(0, 400, 40) for y in range(0, 300, 40)][:70]
    assert len(pixels) > BATCH_SIZE
    output, stderr = read_output(make_points_case(IMAGE, pixels, form="csv"), tmp_path, fake_model_dir, capsys)
    assert "70 points in 2 run(s)" in stderr
    np.testing.assert_allclose([item["probability"] for item in output["points"]],
                               expected_probabilities(IMAGE, pixels), atol=1e-6)


def test_an_image_at_20x_is_resampled_to_40x(make_points_case, fake_model_dir, tmp_path, capsys):
    image = roi_image(150, 200)
    pixels = [(100.0, 75.0), (3.0, 140.0)]
    input_dir = make_points_case(image, multiple_points(to_mm(pixels, spacing=0.0005)), spacing_mm=0.0005)
    output, stderr = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    assert "resampled to 0.25 um/px" in stderr
    expected = fake_probability(crops.crop_points(image, pixels, spacing_um=0.5))
    np.testing.assert_allclose([item["probability"] for item in output["points"]], expected, atol=1e-6)
    native = fake_probability(crops.crop_points(image, pixels))
    assert np.abs(expected - native).max() > 1e-3  # resampling did change what the model saw


def test_an_image_without_a_spacing_is_cut_as_it_is(make_points_case, fake_model_dir, tmp_path, capsys):
    input_dir = make_points_case(IMAGE, PIXELS[:3], form="csv", spacing_mm=None)  # SimpleITK reads 1 mm
    output, stderr = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    assert "no microscope's" in stderr
    np.testing.assert_allclose([item["probability"] for item in output["points"]],
                               expected_probabilities(IMAGE, PIXELS[:3]), atol=1e-6)
    assert output["points"][0]["point"] == [200.0, 150.0, 0.0]  # mm at a spacing of 1 mm: the pixels


def test_greyscale_image(make_points_case, fake_model_dir, tmp_path, capsys):
    grey = IMAGE[..., 0]
    input_dir = make_points_case(IMAGE, multiple_points(to_mm(PIXELS[:2])), name="roi.mha")
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(roi_file(input_dir)))  # spacing 1 mm now
    output, _ = read_output(input_dir, tmp_path, fake_model_dir, capsys)
    expected = fake_probability(np.stack([hand_crop(np.repeat(grey[..., None], 3, -1), 0, 0)] * 2))
    np.testing.assert_allclose([item["probability"] for item in output["points"]], expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# inputs that must fail with one clear line


def rewrite_points(value) -> Callable:
    return lambda d: (d / "mitotic-figures.json").write_text(value if isinstance(value, str) else json.dumps(value))


def set_sockets(*sockets) -> Callable:
    return lambda d: (d / "inputs.json").write_text(json.dumps(list(sockets)))


POINT_FAULTS = {
    # name: (what to do to a valid input folder, what the error line must mention)
    "not valid JSON": (rewrite_points('{"type": "Multiple points", "points": ['), "not valid JSON"),
    "not an object": (rewrite_points([[0.01, 0.01, 0]]), "a JSON array, expected a Multiple points object"),
    "wrong type": (rewrite_points({"type": "Multiple 2D bounding boxes", "points": []}), "'Multiple 2D bounding boxes'"),
    "no type": (rewrite_points({"points": []}), "type is None"),
    "points not a list": (rewrite_points({"type": "Multiple points", "points": {"point": [0, 0, 0]}}),
                          "'points' is a JSON object"),
    "two coordinates": (rewrite_points({"type": "Multiple points", "points": [{"point": [0.01, 0.01]}]}),
                        "points[0]"),
    "a string coordinate": (rewrite_points(multiple_points([[0.01, 0.01, 0], [0.02, "0.02", 0]])), "points[1]"),
    "a boolean coordinate": (rewrite_points(multiple_points([[0.01, True, 0]])), "three numbers"),
    "NaN coordinate": (rewrite_points('{"type": "Multiple points", "points": [{"point": [NaN, 0, 0]}]}'), "points[0]"),
    "huge coordinate": (rewrite_points('{"type": "Multiple points", "points": [{"point": [1%s, 0, 0]}]}' % ("0" * 400)),
                        "points[0]"),
    "entry not an object": (rewrite_points({"type": "Multiple points", "points": [[0.01, 0.01, 0]]}), "points[0]"),
    "no points file": (lambda d: (d / "mitotic-figures.json").unlink(), "points file not found"),
    "point outside": (rewrite_points(multiple_points([[0.01, 0.01, 0], [0.2, 0.01, 0]])),
                      "point 1, [0.2, 0.01, 0] mm = pixel (800.0, 40.0), lies outside the 400x300 image"),
    "point at negative mm": (rewrite_points(multiple_points([[-0.001, 0.01, 0]])), "outside"),
    "no points socket": (set_sockets(image_socket()), "neither"),
    "both points sockets": (set_sockets(image_socket(), points_socket(), csv_socket()), "mitotic-figures and candidate-points"),
    "unknown sockets only": (set_sockets({"interface": {"slug": "histopathology-region"}}), "histopathology-region"),
    "corrupt image": (lambda d: roi_file(d).write_bytes(b"II*\0" + b"junk" * 50), "damaged image"),
    "missing image": (lambda d: roi_file(d).unlink(), "no image file (.tif, .tiff, .mha) for socket " + ROI_SLUG),
    "two images, neither named": (lambda d: write_roi(d / ROI_FOLDER / "other.tif", IMAGE), "holds 2 image files"),
    "a stack, not one image": (
        lambda d: tifffile.imwrite(roi_file(d), np.zeros((3, 20, 20, 3), np.uint8), photometric="rgb"),
        "expected one 2-D region of interest"),
    "unsafe relative path": (
        set_sockets(image_socket(), {**points_socket(), "interface": {"slug": "mitotic-figures", "relative_path": "../x.json"}}),
        "unsafe relative_path"),
}


@pytest.mark.parametrize("fault", list(POINT_FAULTS))
def test_bad_points_input(make_points_case, fake_model_dir, tmp_path, capsys, fault):
    input_dir = make_points_case(IMAGE, multiple_points(to_mm(PIXELS[:2])))
    damage, mentions = POINT_FAULTS[fault]
    damage(input_dir)
    assert_failed(input_dir, tmp_path, fake_model_dir, capsys, mentions)


CSV_FAULTS = {
    "no header": ("200,150\n", "header naming columns x and y"),
    "empty file": ("", "an empty file"),
    "not a number": ("x,y\n200,150\n12a,5\n", "line 3 (12a,5)"),
    "missing column": ("x,y\n200\n", "line 2"),
    "outside": ("x,y\n200,150\n400,10\n", "point 1, [0.1, 0.0025, 0.0] mm = pixel (400.0, 10.0), lies outside"),
}


@pytest.mark.parametrize("fault", list(CSV_FAULTS))
def test_bad_csv(make_points_case, fake_model_dir, tmp_path, capsys, fault):
    input_dir = make_points_case(IMAGE, PIXELS[:2], form="csv")
    text, mentions = CSV_FAULTS[fault]
    (input_dir / "candidate-points.csv").write_text(text)
    assert_failed(input_dir, tmp_path, fake_model_dir, capsys, mentions)


def test_csv_not_utf8(make_points_case, fake_model_dir, tmp_path, capsys):
    input_dir = make_points_case(IMAGE, PIXELS[:2], form="csv")
    (input_dir / "candidate-points.csv").write_bytes(b"x,y\n\xff\xfe,1\n")
    assert_failed(input_dir, tmp_path, fake_model_dir, capsys, "cannot read")
