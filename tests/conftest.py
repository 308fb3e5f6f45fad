"""Shared fixtures: a fake model folder and grand-challenge-shaped input folders, built in tmp_path."""

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from tests.fake_model import write_fake_model

STACK_SLUG = "stacked-histopathology-roi-cropouts"


def stack_socket(image_name: str | None) -> dict:
    """The Track 2 socket object of an official inputs.json."""
    return {
        "file": None,
        "image": {"name": image_name},
        "value": None,
        "interface": {
            "slug": STACK_SLUG,
            "kind": "Image",
            "super_kind": "Image",
            "relative_path": f"images/{STACK_SLUG}",
            "example_value": None,
        },
    }


def write_image(path: Path, pages: np.ndarray, **tiff_options) -> Path:
    """Pages as .mha (SimpleITK) or .tif/.tiff (tifffile; RGB unless told otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mha":
        is_vector = pages.ndim == 4 or (pages.ndim == 3 and pages.shape[-1] in (3, 4))
        sitk.WriteImage(sitk.GetImageFromArray(pages, isVector=is_vector), str(path))
    else:
        options = {"photometric": "rgb", **tiff_options}
        if options["photometric"] == "rgb" and pages.shape[-1] == 4:
            options.setdefault("extrasamples", ["unassalpha"])
        tifffile.imwrite(path, pages, **options)
    return path


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> Path:
    """A model folder (fake.onnx + model.json, threshold 0.5) shared by the session; do not modify."""
    return write_fake_model(tmp_path_factory.mktemp("fake-model"))


def platform_file_name(suffix: str) -> str:
    """The name grand-challenge gives an image socket's file: a UUID with the image's suffix."""
    return f"{uuid.uuid4()}{suffix}"


def only_file(folder: Path) -> Path:
    """The one file in `folder` (a socket folder of a case these fixtures made)."""
    (path,) = [path for path in folder.iterdir() if path.is_file()]
    return path


@pytest.fixture
def make_case(tmp_path):
    """Factory: write pages as grand-challenge lays out a case; return the input folder.

    The image lies in images/<slug>/ under a UUID name (`on_disk`, to make a case by hand), and
    inputs.json's image.name is `name`, the name it was uploaded under.
    """

    def make(pages: np.ndarray, *, name: str = "stack.tif", on_disk: str | None = None, inputs_json: bool = True,
             **tiff_options) -> Path:
        input_dir = tmp_path / "input"
        shutil.rmtree(input_dir, ignore_errors=True)  # a second case replaces the first
        write_image(input_dir / "images" / STACK_SLUG / (on_disk or platform_file_name(Path(name).suffix)), pages,
                    **tiff_options)
        if inputs_json:
            (input_dir / "inputs.json").write_text(json.dumps([stack_socket(name)], indent=4))
        return input_dir

    return make
