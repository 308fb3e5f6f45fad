"""What every benchmark shares: the machine it ran on, medians, and tables printed and saved as Markdown.

Each benchmark prints one or more tables that start with the machine, the library versions and the
load average (a busy machine makes every timing slower, so the reader must see it), and writes the
same text to `benchmarks/results/<name>.md`, which docs/performance.md quotes.
"""

import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
MODEL_DIR = ROOT / "model"
RUN_DIR = ROOT / "runs" / "study" / "recipes" / "cpu_small_colour_soft_long"  # the run the shipped model came from
# AMi-Br, read in place: where the configs expect it, or wherever AMIBR_ROOT says.
DATA_ROOT = Path(os.environ.get("AMIBR_ROOT", ROOT / "data" / "amibr-dev"))


def cpu_name() -> str:
    """The processor's model name as the kernel reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def machine() -> str:
    """One line: CPU, the cores this process may use, memory, OS, Python."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu_name()}, {cores} cores available, {memory_gb():.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def versions(*packages: str) -> str:
    """'name version' for each installed package (missing ones say so)."""
    found = []
    for package in packages:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, title: str, headers: Sequence[str], rows: Sequence[Sequence], *, state: str,
           packages: Sequence[str] = ("onnxruntime", "numpy"), notes: Sequence[str] = ()) -> str:
    """Print one table with its machine header, and save it as benchmarks/results/<name>.md.

    `state` says how quiet the machine was when the measurement began (benchmarks/quiet.py).
    """
    text = "\n".join([
        f"#### {title}",
        "",
        f"- machine: {machine()}",
        *([f"- versions: {versions(*packages)}"] if packages else []),  # none: what runs is inside an image
        f"- load average when measuring began: {state}; when the table was written: {load_average()}",
        f"- measured {time.strftime('%Y-%m-%d %H:%M %Z')} with `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        "",
        markdown_table(headers, rows),
        *([""] + [f"{note}" for note in notes] if notes else []),
        "",
    ])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.md").write_text(text)
    print(text, flush=True)
    return text


def display_path(path: Path) -> str:
    """`path` relative to the repository when inside it, so tables name no machine's folders."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def amibr_patches(count: int | None = None) -> np.ndarray:
    """The first `count` (all when None) AMi-Br patches as (N, 128, 128, 3) uint8, read in place."""
    from training.data import load_images, read_dataset

    samples = read_dataset("amibr", DATA_ROOT)
    return load_images(samples[:count] if count else samples)


def sample_stack_pixels() -> np.ndarray:
    """The project's sample stack (test/input), (16, 128, 128, 3) uint8, read as process.py reads it."""
    from inference.images import read_stack

    return read_stack(path=next((ROOT / "test" / "input" / "images").rglob("*.tif*")))


def shipped_onnx() -> Path:
    """The shipped graph, as model/model.json names it."""
    import json

    return MODEL_DIR / json.loads((MODEL_DIR / "model.json").read_text())["onnx"]
