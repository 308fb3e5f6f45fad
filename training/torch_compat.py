"""Import timm (and through it torchvision) on a CPU-only PyTorch.

torchvision 0.28 exists only as a CUDA build. Next to a CPU build of torch its C extension does not
load, and `import torchvision` then dies with "operator torchvision::nms does not exist" because
its Python side registers fake kernels for ops the extension would have defined. Defining the two
op schemas ourselves lets torchvision (and so timm and diffusers) import; its image decoders and
`ops.nms` stay unusable, and this project uses neither. Where torchvision imports normally, nothing
is changed.
"""

import sys

import torch

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the schema registrations alive for the life of the process


def ensure_torchvision() -> None:
    """Import torchvision, defining its missing op schemas only if its extension did not load."""
    global _library
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_SCHEMAS:
        _library.define(schema)
    import torchvision  # noqa: F401


def import_timm():
    """Return the timm module (with its optim, scheduler and utils loaded), on CPU-only torch too."""
    ensure_torchvision()
    import timm
    import timm.optim
    import timm.scheduler
    import timm.utils  # noqa: F401  (submodules timm does not import itself)

    return timm
