"""Wait for a quiet machine before timing anything, and say how quiet it was.

On a shared machine a training run or a Docker build in the background can double every timing.
A benchmark therefore waits (polling) until the 1-minute load average is below a limit and no
process of the known heavy kinds runs; when that never happens within the time allowed it measures
anyway, and the returned line, printed at the top of the table, says so.
"""

import os
import subprocess
import time

# Training, the synthetic-image generator, CI, Docker builds and test runs: what shares this machine.
BUSY_PATTERN = r"training[ .](train|synth)|\.ci/run|docker build|pytest"


def busy_processes(pattern: str = BUSY_PATTERN) -> list[str]:
    """Command lines of running processes that match `pattern` (pgrep -f), shortened."""
    try:
        found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, check=False).stdout
    except OSError:
        return []
    return [line.split(" ", 1)[-1][:80] for line in found.splitlines() if str(os.getpid()) != line.split(" ", 1)[0]]


def wait_until_quiet(*, max_load: float = 0.6, poll_s: float = 120, limit_s: float = 3600,
                     enabled: bool = True) -> str:
    """Block until the machine is quiet (or `limit_s` passed); return a line that describes its state."""
    started = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        busy = busy_processes()
        if load < max_load and not busy:
            return f"{load:.3f} (quiet: below {max_load}, none of training, CI, docker build, pytest running)"
        waited = time.monotonic() - started
        if not enabled or waited >= limit_s:
            reason = "not waited for" if not enabled else f"NOT QUIET after waiting {waited / 60:.0f} min"
            return f"{load:.2f} ({reason}; running: {'; '.join(busy) or 'nothing of the known kinds'})"
        print(f"quiet: load {load:.2f}, {len(busy)} busy processes; next look in {poll_s:.0f} s", flush=True)
        time.sleep(min(poll_s, max(limit_s - waited, 1)))


def add_arguments(parser) -> None:
    """The --no-wait / --wait-minutes options every benchmark offers."""
    parser.add_argument("--no-wait", action="store_true", help="measure at once, however busy the machine is")
    parser.add_argument("--wait-minutes", type=float, default=60,
                        help="give up waiting for a quiet machine after this long and measure anyway (default 60)")


def from_arguments(args) -> str:
    return wait_until_quiet(limit_s=args.wait_minutes * 60, enabled=not args.no_wait)
