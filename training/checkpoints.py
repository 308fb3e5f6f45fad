"""Resume points and metrics logs, shared by the classifier's and the generator's training loops.

A loop saves everything it needs to continue exactly (tensors and plain data, `torch.load` with
`weights_only=True`) to `resume.pt` after each epoch or logging step, atomically, and removes it
once its stage is finished. A resume point records what it was made with (the config, the split);
loading it with anything else is refused, so a resumed run never mixes two experiments.
"""

import csv
from pathlib import Path
from typing import Any

import torch

RESUME_FILE = "resume.pt"


def save_resume(folder: Path, state: dict) -> None:
    """Write `state` as `<folder>/resume.pt` (a temporary file first: a crash leaves the old one or none)."""
    scratch = Path(folder) / (RESUME_FILE + ".tmp")
    torch.save(state, scratch)
    scratch.replace(Path(folder) / RESUME_FILE)


def load_resume(folder: Path, *, device, checks: dict[str, tuple[Any, str]]) -> dict:
    """The resume point in `folder`, {} if none; refused when a recorded value differs from the wanted one.

    `checks` maps a recorded key to (the value this run has, or a predicate that says whether a
    recorded value fits; what to tell the user when it does not). A key an older resume point
    lacks is not checked.
    """
    path = Path(folder) / RESUME_FILE
    if not path.is_file():
        return {}
    state = torch.load(path, map_location=device, weights_only=True)
    for key, (wanted, problem) in checks.items():
        if key not in state:
            continue
        if not (wanted(state[key]) if callable(wanted) else state[key] == wanted):
            raise ValueError(f"{path}: {problem}")
    return state


def clear_resume(folder: Path) -> None:
    """Remove the resume point of a finished stage."""
    (Path(folder) / RESUME_FILE).unlink(missing_ok=True)


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    """All logged rows as one CSV; the columns are every key any row has, in order of appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
