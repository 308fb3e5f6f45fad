"""One fold's generator end to end: VAE, pre-training, fine-tuning, balance set, quality report.

Every step skips what is finished and resumes what was interrupted, so `synth all` can be run
again after a kill. Wall-clock seconds of each step run in this session are added to
`<run>/fold_<k>/timings.json` (a resumed stage adds its remaining part).
"""

import json
import time
from pathlib import Path

import torch

from training.synth.quality import load_judge, quality_report
from training.synth.run import GeneratorRun
from training.synth.sample import SampleOptions, sample_balance
from training.synth.trainer import train_dit, train_vae


def _timed(run: GeneratorRun, fold: int, step: str, work):
    started = time.perf_counter()
    result = work()
    path = run.fold_dir(fold) / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[step] = timings.get(step, 0.0) + time.perf_counter() - started
    path.write_text(json.dumps(timings, indent=2) + "\n")
    return result


def run_fold(run: GeneratorRun, fold: int, device: torch.device, *, options: SampleOptions,
             classifier: Path | None = None, show_progress: bool = True) -> dict:
    """Make (or finish) fold `fold`'s generator and balance set; with `classifier`, its quality report too."""
    fold_dir, data = run.fold_dir(fold), run.fold_data(fold)
    config = run.config
    if classifier is not None:
        load_judge(classifier, fold, run.split)  # a wrong judge fails now, not after the training
    _timed(run, fold, "vae", lambda: train_vae(config, fold_dir, data, device, show_progress=show_progress))
    for stage in ("pretrain", "finetune"):
        _timed(run, fold, stage, lambda: train_dit(config, fold_dir, data, stage, device, show_progress=show_progress))
    manifest = _timed(run, fold, "sample", lambda: sample_balance(run, fold, ratio=None, options=options, device=device,
                                                                   show_progress=show_progress))
    result = {"fold": fold, "manifest": str(manifest)}
    if classifier is not None:
        result["quality"] = _timed(run, fold, "quality", lambda: quality_report(
            run, fold, classifier, options=options, device=device, show_progress=show_progress))
    return result
