"""Grand-challenge inference entry point for MIDOG 2025 Track 2: atypical mitotic figure classification.

Follows the Track 2 container contract of the MIDOG 2025 challenge (https://midog2025.deepmicroscopy.org):
`/input/inputs.json` lists the sockets; the `stacked-histopathology-roi-cropouts` socket names one
multi-page image under `/input/images/stacked-histopathology-roi-cropouts/`, one 128x128 RGB crop
around a mitotic figure per page. The answer is `/output/multiple-mitotic-figure-classification.json`:
one `{"class": "normal"|"atypical", "confidence": P(atypical)}` per page, in page order, where
`confidence` is always a JSON float. The model is the ONNX graph + `model.json` of
docs/model-format.md, run with ONNX Runtime (CUDA when present, CPU otherwise).

A second interface takes what a Track 1 detector works on and writes: the whole region of interest
(socket `histopathology-region-of-interest-cropout`, `/input/images/histopathology-roi-cropout/`)
plus candidate points, either grand-challenge "Multiple points" JSON in mm (socket
`mitotic-figures`, inline `value` or `/input/mitotic-figures.json`, as Track 1 containers write
it) or a CSV of `x,y` pixels (socket `candidate-points`, `/input/candidate-points.csv`). Each point
gets a crop cut by inference/crops.py (black beyond the image's edge; resampled to 0.25 um/px first when the
image's spacing is not a 40x one) and the answer is `/output/atypical-mitotic-figures.json`, the
same points in the same order, each named "atypical mitotic figure" or "normal mitotic figure" with
`probability` = P(atypical). A point outside the image is an error. docs/interfaces.md has both.

Pages (and whole images, for their pixel types and channels) are taken as they come, with these
adjustments (each one logged when it happens):

| input                          | what process.py does                                              |
|--------------------------------|-------------------------------------------------------------------|
| 2-D image (a single page)      | one page, N = 1                                                   |
| more than 16 pages             | all pages, run through the model in batches of BATCH_SIZE         |
| greyscale (1 channel)          | the channel is replicated to R, G and B                           |
| grey + alpha (2 channels)      | alpha dropped, grey replicated                                    |
| RGBA (4 channels)              | alpha dropped                                                     |
| uint16                         | round(value / 257): the inverse of the usual 8->16 bit v * 257    |
| other integer types            | kept when every value lies in [0, 255], else an error             |
| float                          | round(value * 255) when every value lies in [0, 1], else an error |
| pages larger than the model    | centre crop, per axis                                             |
| pages smaller than the model   | centre pad with black, per axis, like the official edge crops     |

Run locally as `python process.py --input DIR --output DIR [--model DIR]`. Everything a user can get
wrong ends in one line `error: ...` on stderr, exit code 1, and no output file. This file holds
only what the platform shapes (its paths, the arguments, the exit); the work is in the `inference/`
package, one module per concern.
"""

import argparse
import atexit
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from inference.errors import InputError, Stopwatch, log, one_line
from inference.run import run

INPUT_PATH = Path("/input")
OUTPUT_PATH = Path("/output")
MODEL_PATHS = (Path("/opt/ml/model"), Path(__file__).parent / "model")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=INPUT_PATH, help=f"input folder (default {INPUT_PATH})")
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH, help=f"output folder (default {OUTPUT_PATH})")
    parser.add_argument("--model", type=Path, default=None,
                        help=f"model folder (default: the first of {', '.join(map(str, MODEL_PATHS))} "
                             "holding a model.json)")
    parser.add_argument("--timings", action="store_true",
                        help="end with one line 'process: timings {...}' on stderr: seconds per phase (load, read, "
                             "infer, write) and the Unix times main() started and ended (benchmarks/startup.py)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    stopwatch = Stopwatch()
    args = parse_args(argv)
    model_dirs = (args.model,) if args.model is not None else MODEL_PATHS
    try:
        run(input_dir=args.input, output_dir=args.output, model_dirs=model_dirs, stopwatch=stopwatch)
    except InputError as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return 1
    if args.timings:
        log(f"timings {stopwatch.summary()}")
    return 0


def exit_at_once(exit_code: int) -> None:
    """End the process now: flush stdout and stderr, then os._exit, without the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


if __name__ == "__main__":
    exit_code = main()
    # The outputs are written and fsynced: the interpreter's teardown (mostly SimpleITK's module
    # cleanup, where a file needed it) would only hold the platform up. Done at exit rather than
    # here, so that code running this file as __main__ in-process (runpy) still reaches its end first.
    atexit.register(exit_at_once, exit_code)
    raise SystemExit(exit_code)
