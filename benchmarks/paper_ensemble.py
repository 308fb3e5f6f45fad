"""The seed paper's ensemble on the CPU: 5 ConvNeXt-Small members x 2 views, cold, per 16-page stack.

What a submission of the paper's size costs when the GPU on grand-challenge is not usable (the
container then falls back to the CPU): process.py is timed cold, a fresh process per run, from
spawn to exit, on the sample stack, interleaved with the shipped model. The members carry random
weights of the right shape (no pretrained or trained weights can be had here); speed does not
depend on the values. The graph is built once with the exporter's own code and kept in
runs/benchmarks/paper-ensemble/ (about 1 GB).
"""

import argparse
import hashlib
import json
from pathlib import Path

from benchmarks import quiet
from benchmarks.common import MODEL_DIR, ROOT, median, ms, report
from benchmarks.startup import SAMPLE_STACK, run_process

ENSEMBLE_DIR = ROOT / "runs" / "benchmarks" / "paper-ensemble"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_paper_ensemble(folder: Path, *, members: int = 5, backbone: str = "convnext_small") -> Path:
    """A model folder process.py loads: `members` randomly initialised networks x (identity, vflip).

    torch is imported only to build the graph: a forked child's peak memory counts its parent's
    (see startup.spawn), so the peaks of a run that had to build it include torch's; run it again.
    """
    spec_path = folder / "model.json"
    if spec_path.is_file() and json.loads(spec_path.read_text()).get("members_built") == [backbone] * members:
        return folder
    import torch

    from training.ensemble import PAPER_VIEWS, EnsembleClassifier, Preprocess
    from training.export import _to_onnx
    from training.models import create_classifier

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    networks = [create_classifier(backbone).eval() for _ in range(members)]
    preprocessors = [Preprocess(IMAGENET_MEAN, IMAGENET_STD) for _ in range(members)]
    onnx_path = folder / "paper-ensemble.onnx"
    print(f"paper_ensemble: exporting {members} x {backbone} x {len(PAPER_VIEWS)} views to {onnx_path} (minutes)")
    _to_onnx(EnsembleClassifier(networks, preprocessors, PAPER_VIEWS).eval(), onnx_path)
    spec = {
        "format_version": 1, "name": f"{members}x{backbone}-random", "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "input": {"name": "patches", "dtype": "uint8", "layout": "NHWC", "height": 128, "width": 128, "channels": 3},
        "output": {"name": "p_atypical"}, "classes": ["normal", "atypical"], "threshold": 0.5,
        "tta_views": list(PAPER_VIEWS), "members_built": [backbone] * members,
        "note": "random weights of the paper's shape, for timing only",
    }
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold runs of each model (default 3)")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    quiet.add_arguments(parser)
    args = parser.parse_args(argv)
    paper_dir = build_paper_ensemble(ENSEMBLE_DIR, members=args.members)
    state = quiet.from_arguments(args)
    script = ROOT / "process.py"
    models = {"shipped model (5 x ResNet-10-T-slim, 64 px, 2 views)": MODEL_DIR,
              f"paper size ({args.members} x ConvNeXt-Small, 128 px, 2 views)": paper_dir}
    for model_dir in models.values():  # untimed: libraries and graph into the page cache
        run_process(args.python, script, input_dir=SAMPLE_STACK, model_dir=model_dir, timings=False)
    runs = {name: [] for name in models}
    for _ in range(args.runs):
        for name, model_dir in models.items():
            runs[name].append(run_process(args.python, script, input_dir=SAMPLE_STACK, model_dir=model_dir,
                                          timings=True))
    rows = []
    for name, model_dir in models.items():
        size_mb = sum(path.stat().st_size for path in model_dir.glob("*.onnx")) / 1e6
        phase = {key: median([run[key] for run in runs[name]]) for key in ("load", "infer", "total")}
        rows.append([name, f"{size_mb:.0f}", ms(phase["load"]), ms(phase["infer"]), ms(phase["total"]),
                     ms(min(run["total"] for run in runs[name])),
                     f"{max(run['peak_mb'] for run in runs[name]):.0f}"])
    report("paper_ensemble", f"process.py per 16-page stack on the CPU, cold ({args.runs} fresh processes each, "
           "interleaved)",
           ["model", "graph MB", "load ms", "infer ms", "**spawn -> exit ms**", "min total ms", "peak resident MB"],
           rows, state=state,
           notes=["Medians. load: model.json, sha256 and the ONNX Runtime session; infer: fitting the pages and the "
                  "graph (16 pages x views x members). The paper-size members carry random weights: timing only."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
