"""Size of the built container images, what takes the room, and the files to upload (./build.sh --save)."""

import argparse
import subprocess
import sys

from benchmarks.common import ROOT, report

TAGS = ("midog25-atypical:latest", "midog25-atypical:cpu")  # ./build.sh and ./build.sh --cpu
SAVED = ("midog25-atypical.tar.gz", "midog25-atypical-cpu.tar.gz", "model.tar.gz")
SITE_PACKAGES = "/opt/venv/lib/python3.11/site-packages"
LARGEST = 5  # packages listed per image


def docker(*arguments: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["docker", *arguments], capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None


def image_mb(tag: str) -> float | None:
    """The image's size as Docker reports it (MB), None when it is not built or Docker is unavailable."""
    inspected = docker("image", "inspect", tag, "--format", "{{.Size}}")
    return int(inspected.stdout.strip()) / 1e6 if inspected and inspected.returncode == 0 else None


def largest_packages(tag: str) -> list[tuple[str, int]]:
    """(package folder, MB) of the largest installed packages in the image's virtual environment."""
    listed = docker("run", "--rm", "--network", "none", "--entrypoint", "du", tag, "-sm",
                    *[f"{SITE_PACKAGES}/{name}" for name in ("SimpleITK", "numpy", "numpy.libs", "onnxruntime",
                                                              "nvidia")])
    if not listed:
        return []
    sizes = [(line.split("\t")[1].rsplit("/", 1)[-1], int(line.split("\t")[0]))
             for line in listed.stdout.splitlines() if "\t" in line]
    return sorted(sizes, key=lambda item: -item[1])[:LARGEST]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", nargs="+", default=list(TAGS))
    args = parser.parse_args(argv)
    rows = []
    for tag in args.tags:
        size = image_mb(tag)
        rows.append([f"image {tag} (`docker image inspect`)", f"{size:.0f} MB" if size is not None else "not built"])
        if size is not None:
            rows += [[f"&nbsp;&nbsp;of which {name}", f"{mb} MB"] for name, mb in largest_packages(tag)]
    for name in SAVED:
        path = ROOT / "build" / name
        rows.append([f"build/{name} (`./build.sh --save`)", f"{path.stat().st_size / 1e6:.0f} MB" if path.is_file()
                     else "not written"])
    report("image_size", "Container image sizes", ["what", "size"], rows, state="not timed", packages=())
    return 0


if __name__ == "__main__":
    sys.exit(main())
