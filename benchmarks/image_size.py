"""Size of the built container image (and of the files to upload, when ./build.sh --save wrote them)."""

import argparse
import subprocess
import sys

from benchmarks.common import ROOT, report

TAG = "midog25-atypical:latest"


def docker_size(tag: str) -> str:
    """The image's size as Docker reports it, or why there is none."""
    try:
        inspected = subprocess.run(["docker", "image", "inspect", tag, "--format", "{{.Size}}"],
                                   capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"not built (docker unavailable: {error})"
    if inspected.returncode != 0:
        return "not built"
    return f"{int(inspected.stdout.strip()) / 1e9:.2f} GB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=TAG)
    args = parser.parse_args(argv)
    rows = [[f"image {args.tag} (`docker image inspect`)", docker_size(args.tag)]]
    for name in ("midog25-atypical.tar.gz", "model.tar.gz"):
        path = ROOT / "build" / name
        rows.append([f"build/{name} (`./build.sh --save`)", f"{path.stat().st_size / 1e6:.0f} MB" if path.is_file()
                     else "not written"])
    report("image_size", "Container image size", ["what", "size"], rows, state="not timed", packages=())
    return 0


if __name__ == "__main__":
    sys.exit(main())
