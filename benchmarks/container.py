"""Per-stack wall time of the container itself: `docker run` on the sample stack, cold, as test.sh runs it.

Grand-challenge starts one container per stack, so this is the time a user's test set costs per
stack on such a machine, Docker's own start-up included. The image's Python environment is taken
from a built image (./build.sh); process.py, crops.py and model/ are laid over it in a thin
image of their own, once from this working tree and, with `--baseline REV`, once from that git
revision, and the two run interleaved. `docker run --entrypoint python ... -c pass` times the
container and interpreter start-up alone.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import quiet
from benchmarks.common import ROOT, median, ms, report
from benchmarks.image_size import TAGS
from benchmarks.startup import BASELINE_FILES, sample_case

TAG = TAGS[0]  # the GPU image, as grand-challenge would run it on a CPU worker
# process.py, its modules (inference/ or beside it) and model/, compiled as the Dockerfile compiles them
OVERLAY = ("FROM {base}\nCOPY . /opt/app/\nUSER root\nRUN /opt/venv/bin/python -m compileall -q /opt/app\n"
           "USER user\n")


def build_overlay(base: str, tag: str, *, revision: str | None) -> None:
    """`base` with process.py, its modules and model/ of the working tree (or of a git revision) on top."""
    with tempfile.TemporaryDirectory() as context:
        for name in BASELINE_FILES:
            target = Path(context) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if revision:
                shown = subprocess.run(["git", "show", f"{revision}:{name}"], cwd=ROOT, capture_output=True,
                                       check=name == "process.py")
                if shown.returncode == 0:
                    target.write_bytes(shown.stdout)
            elif (ROOT / name).is_file():
                shutil.copy(ROOT / name, target)
        shutil.copytree(ROOT / "model", Path(context) / "model")
        (Path(context) / "Dockerfile").write_text(OVERLAY.format(base=base))
        subprocess.run(["docker", "build", "--quiet", "--tag", tag, context], check=True, capture_output=True,
                       env={**os.environ, "DOCKER_BUILDKIT": "0"})  # the legacy builder: no buildx needed


def docker_run(input_dir: Path, *image_and_arguments: str) -> float:
    """Seconds of one `docker run ... IMAGE [ARGS]` on `input_dir` with the platform's restrictions (see test.sh)."""
    with tempfile.TemporaryDirectory() as output_dir:
        Path(output_dir).chmod(0o777)  # the container's user is not the folder's owner
        command = ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
                   "--volume", f"{input_dir.resolve()}:/input:ro", "--volume", f"{output_dir}:/output",
                   *image_and_arguments]
        began = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - began
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {completed.stderr[-2000:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=TAG, help=f"the built image whose environment is used (default {TAG})")
    parser.add_argument("--baseline", metavar="REV", help="also time process.py of this git revision, interleaved")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--gpus", action="store_true", help="pass --gpus all to docker run (a GPU machine)")
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    if subprocess.run(["docker", "image", "inspect", args.base], capture_output=True, check=False).returncode:
        print(f"container: {args.base} not built; nothing to time (./build.sh makes it)")
        return 0
    tags = {"this working tree": "midog25-atypical:bench-current"}
    if args.baseline:
        tags[f"git {args.baseline}"] = "midog25-atypical:bench-baseline"
    try:
        for label, tag in tags.items():
            build_overlay(args.base, tag, revision=args.baseline if label.startswith("git") else None)
        state = quiet.from_arguments(args)
        gpus = ["--gpus", "all"] if args.gpus else []
        seconds = {label: [] for label in [*tags, "start-up only"]}
        case = sample_case(args.baseline)
        for _ in range(args.runs):
            for label, tag in tags.items():
                seconds[label].append(docker_run(case, *gpus, tag))
            seconds["start-up only"].append(docker_run(case, *gpus, "--entrypoint", "/opt/venv/bin/python",
                                                       tags["this working tree"], "-c", "pass"))
    finally:
        subprocess.run(["docker", "image", "rm", *tags.values()], capture_output=True, check=False)
    rows = [[f"process.py of {label}" if label in tags else "container + Python start-up and exit alone (`-c pass`)",
             ms(median(values)), ms(min(values)), ms(max(values))] for label, values in seconds.items()]
    report("container", f"`docker run` per 16-patch stack, cold ({args.runs} runs each, interleaved)",
           ["what runs", "median ms", "min ms", "max ms"], rows, state=state, packages=(),
           notes=[f"Environment of {args.base}; {'--gpus all' if args.gpus else 'no GPU passed in (CPU provider)'}; "
                  "--network none, read-only root and input, as ./test.sh runs it."])
    return 0


if __name__ == "__main__":
    sys.exit(main())
