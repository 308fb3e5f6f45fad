"""What every part of the inference package reports with: the user's error, log lines, phase timings."""

import contextlib
import json
import sys
import time
from collections.abc import Iterator


class InputError(Exception):
    """A problem the user can fix: input, model folder, or what the model returned."""


def log(message: str) -> None:
    """One short progress line on stderr."""
    print(f"process: {message}", file=sys.stderr, flush=True)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class Stopwatch:
    """Wall-clock seconds of each phase of one case, for the log lines and for `--timings`."""

    def __init__(self) -> None:
        self.started_at = time.time()  # Unix time, comparable with a clock outside this process
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    def ms(self, name: str) -> str:
        return f"{self.seconds[name] * 1000:.0f} ms"

    def summary(self) -> str:
        """One JSON object: seconds per phase, and the Unix times main() started and ended."""
        return json.dumps({"started_at": self.started_at, **self.seconds, "ended_at": time.time()})
