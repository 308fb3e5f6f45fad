"""inputs.json and its sockets: which image and points files a case holds, found as grand-challenge lays them out.

On grand-challenge an image socket's file carries the platform's own name (a UUID with
`.tif`/`.tiff` or `.mha`) in `<input>/<relative_path>/`, and inputs.json's image.name is the name
it was uploaded under (the evaluator's key to the ground truth); see the README.
"""

import json
from pathlib import Path
from typing import Any

from inference.contract import CSV_SLUG, IMAGE_SUFFIXES, POINTS_SLUG, RELATIVE_PATHS, ROI_SLUG, STACK_SLUG
from inference.errors import InputError, log


MAX_LISTED = 10  # file names an error message lists at most


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside `folder` (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def stand_in_sockets(*, input_dir: Path) -> list[dict[str, Any]]:
    """The sockets inputs.json would list for a folder without one: its only image, with any points file."""
    stack_folder, roi_folder = input_dir / RELATIVE_PATHS[STACK_SLUG], input_dir / RELATIVE_PATHS[ROI_SLUG]
    stacks, rois = list_images(stack_folder), list_images(roi_folder)
    if len(stacks) + len(rois) != 1:
        raise InputError(f"{input_dir / 'inputs.json'} not found, and {stack_folder} holds {len(stacks)} images, "
                         f"{roi_folder} {len(rois)} images (need exactly one in all to go on without inputs.json)")
    slug, image = (STACK_SLUG, stacks[0]) if stacks else (ROI_SLUG, rois[0])
    log(f"no inputs.json; using the only image, {image}")
    sockets = [{"interface": {"slug": slug, "relative_path": RELATIVE_PATHS[slug]}, "image": {"name": image.name}}]
    if slug == ROI_SLUG:
        sockets += [{"interface": {"slug": points_slug, "relative_path": RELATIVE_PATHS[points_slug]}}
                    for points_slug in (POINTS_SLUG, CSV_SLUG) if (input_dir / RELATIVE_PATHS[points_slug]).is_file()]
    return sockets


def read_sockets(*, input_dir: Path) -> list[dict[str, Any]]:
    """The socket list of `<input_dir>/inputs.json`, or a stand-in when only one image lies there."""
    inputs_json = input_dir / "inputs.json"
    if not inputs_json.is_file():
        return stand_in_sockets(input_dir=input_dir)
    try:
        sockets = json.loads(inputs_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {inputs_json}: {error}") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{inputs_json} is not valid JSON: {error}") from error
    if not isinstance(sockets, list) or not all(
        isinstance(socket, dict) and isinstance(socket.get("interface"), dict)
        and isinstance(socket["interface"].get("slug"), str)
        for socket in sockets
    ):
        raise InputError(f"{inputs_json} is not a list of sockets (objects with interface.slug)")
    return sockets


def socket_by_slug(sockets: list[dict[str, Any]], slug: str) -> dict[str, Any]:
    return next(socket for socket in sockets if socket["interface"]["slug"] == slug)


def socket_path(socket: dict[str, Any], *, input_dir: Path) -> Path:
    """`<input_dir>/<relative_path>` of a socket (grand-challenge's default when absent), kept inside input_dir."""
    interface = socket["interface"]
    relative_path = Path(interface.get("relative_path") or RELATIVE_PATHS.get(interface["slug"], interface["slug"]))
    if relative_path.is_absolute() or ".." in relative_path.parts:
        raise InputError(f"inputs.json: socket {interface['slug']} has an unsafe relative_path {relative_path}")
    return input_dir / relative_path


def uploaded_name(socket: dict[str, Any]) -> str | None:
    """inputs.json's image.name: the name the image had when it was uploaded (None when absent)."""
    image = socket.get("image")
    name = image.get("name") if isinstance(image, dict) else None
    return name if isinstance(name, str) and name != "" else None


def is_plain_file_name(name: str) -> bool:
    """A name that, joined to a folder, stays directly inside it."""
    return Path(name).name == name and name not in (".", "..")


def socket_image_path(socket: dict[str, Any], *, input_dir: Path) -> Path:
    """The image file of an image socket: `<input_dir>/<relative_path>/`'s one image, whatever its name.

    On grand-challenge that file carries the platform's own name (a UUID, `.tif`/`.tiff` or `.mha`)
    and inputs.json's image.name is the name it was uploaded under, which the evaluator uses to find
    the ground truth. A file called image.name is used when the folder holds one (cases made by
    hand); otherwise the name is only logged. Only files directly in the folder are considered.
    """
    slug = socket["interface"]["slug"]
    folder = socket_path(socket, input_dir=input_dir)
    name = uploaded_name(socket)
    if name is not None and is_plain_file_name(name) and (folder / name).is_file():
        return folder / name
    images = list_images(folder)
    if len(images) == 1:
        if name is not None:
            log(f"socket {slug}: uploaded as {name!r}, on disk as {images[0].name}")
        return images[0]
    named = f"inputs.json's image.name: {name!r}" if name is not None else "inputs.json names no image"
    if not images:
        missing = ", which does not exist" if not folder.is_dir() else ""
        raise InputError(f"no image file ({', '.join(IMAGE_SUFFIXES)}) for socket {slug} in {folder}{missing} "
                         f"({named})")
    listed = ", ".join(image.name for image in images[:MAX_LISTED]) + (", ..." if len(images) > MAX_LISTED else "")
    raise InputError(f"{folder} holds {len(images)} image files for socket {slug} ({listed}) and none of them "
                     f"is the named one ({named}); expected the socket's one image")
