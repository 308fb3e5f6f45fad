"""One case from start to end: read the sockets, load the model, run the interface's handler, write its outputs."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inference.contract import ROI_SLUG, STACK_SLUG
from inference.errors import InputError, Stopwatch, log
from inference.model import find_model_dir, load_model
from inference.output import write_json
from inference.points import classify_points
from inference.sockets import read_sockets
from inference.stack import classify_stack


Handler = Callable[..., dict[str, Any]]


# slug -> handler(sockets=, input_dir=, model=, stopwatch=) returning {output file name: JSON payload}. The points
# interface is keyed by its image; the handler finds the points socket beside it.
SOCKET_HANDLERS: dict[str, Handler] = {STACK_SLUG: classify_stack, ROI_SLUG: classify_points}


def select_handler(sockets: list[dict[str, Any]]) -> "Handler":
    """The handler of the first socket whose slug this algorithm knows."""
    slugs = [socket["interface"]["slug"] for socket in sockets]
    for slug in slugs:
        if slug in SOCKET_HANDLERS:
            return SOCKET_HANDLERS[slug]
    raise InputError(f"inputs.json has no socket this algorithm reads: found slugs {slugs}, "
                     f"expected one of {sorted(SOCKET_HANDLERS)}")


def run(*, input_dir: Path, output_dir: Path, model_dirs: Sequence[Path], stopwatch: Stopwatch) -> None:
    """One case: read the sockets, load the model, run the socket's handler, write its outputs."""
    sockets = read_sockets(input_dir=input_dir)
    handler = select_handler(sockets)
    with stopwatch.phase("load"):
        model_dir = find_model_dir(model_dirs)
        model = load_model(model_dir=model_dir)
    log(f"model {model.name} from {model_dir}, provider {model.provider}, load {stopwatch.ms('load')}")
    outputs = handler(sockets=sockets, input_dir=input_dir, model=model, stopwatch=stopwatch)
    with stopwatch.phase("write"):
        for name, payload in outputs.items():
            write_json(path=output_dir / name, payload=payload)
    log(f"write {', '.join(str(output_dir / name) for name in outputs)}, {stopwatch.ms('write')}")
