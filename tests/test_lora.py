"""Foundation-model backbones from a local folder, LoRA through peft, merge-then-export, domain weighting.

The ViT here is one the test creates (timm's ViT-Tiny/16 cut to two blocks), saved at 224 px like a
model card's checkpoint; training runs it at 128 px, so its position embeddings are resized at load.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.amibr_fixture import make_patch, write_amibr
from training.cli import main as training_cli
from training.export import load_member
from training.lora import LoraConfig, LoraError, apply_lora, rebuild
from training.models import FOUNDATION_MODELS, WeightsError, backbone_spec, create_classifier, model_args
from training.torch_compat import import_timm
from training.train import domain_weights, focal_loss

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = "vit_tiny_patch16_224"
TINY = {"depth": 2}


def save_base(folder: Path, **kwargs) -> Path:
    """A 'pretrained' ViT in a hub-snapshot-like folder (model.safetensors), as a user would hold it."""
    torch.manual_seed(0)
    network = import_timm().create_model(ARCHITECTURE, num_classes=1000, **{**TINY, **kwargs})
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """(work folder, run folder, model folder) of a 2-fold LoRA run on the tiny AMi-Br, exported."""
    work = tmp_path_factory.mktemp("lora")
    root = write_amibr(work / "amibr", n_slides=6, per_slide=8)
    base = save_base(work / "base-vit")
    config = {"name": "tiny_lora", "backbone": f"timm:{ARCHITECTURE}", "backbone_kwargs": {**TINY, "img_size": 128},
              "weights": str(base), "data": {"kind": "amibr", "root": str(root)}, "split": {"n_folds": 2},
              "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
              "optim": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "threads": 2, "tensorboard": False,
                        "ema_decay": 0, "loss": "focal", "domain_weighting": "balanced", "domain_key": "dataset"}}
    (work / "tiny_lora.yaml").write_text(yaml.safe_dump(config))
    run_dir, model_dir = work / "run", work / "model"
    assert training_cli(["train", "--config", str(work / "tiny_lora.yaml"), "--out", str(run_dir), "--quiet"]) == 0
    assert training_cli(["export", str(run_dir), "--out", str(model_dir), "--name", "tiny-lora"]) == 0
    return work, run_dir, model_dir


def test_lora_trains_only_the_adapters_and_the_head():
    network = create_classifier(f"timm:{ARCHITECTURE}", backbone_kwargs={**TINY, "img_size": 128})
    wrapped = apply_lora(network, LoraConfig(rank=4))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".head." in n for n in trainable)
    assert {n.split(".")[5] for n in trainable if "lora_" in n} == {"qkv", "proj"}  # ...blocks.<i>.attn.<layer>
    assert not any("patch_embed" in n for n in trainable)
    unfrozen = apply_lora(create_classifier(f"timm:{ARCHITECTURE}", backbone_kwargs=TINY),
                          LoraConfig(rank=4, unfreeze_last_blocks=1))
    names = [n for n, p in unfrozen.named_parameters() if p.requires_grad]
    assert any(".blocks.1.mlp.fc1." in n for n in names) and not any(".blocks.0.mlp." in n for n in names)
    with pytest.raises(LoraError, match="match no layer"):
        apply_lora(create_classifier(f"timm:{ARCHITECTURE}", backbone_kwargs=TINY), LoraConfig(rank=4, target_modules=["q_proj"]))
    with pytest.raises(LoraError, match="the network has 2 blocks"):
        apply_lora(create_classifier(f"timm:{ARCHITECTURE}", backbone_kwargs=TINY), LoraConfig(rank=4, unfreeze_last_blocks=3))


def test_the_checkpoint_holds_adapters_and_head_and_points_at_its_base(lora_run):
    work, run_dir, _ = lora_run
    for fold in (0, 1):
        fold_dir = run_dir / f"fold_{fold}"
        stored = load_file(str(fold_dir / "model.safetensors"))
        assert stored and all("lora_" in k or ".head." in k for k in stored)
        assert (fold_dir / "model.safetensors").stat().st_size < (work / "base-vit" / "model.safetensors").stat().st_size / 10
        args = json.loads((fold_dir / "model_args.json").read_text())
        assert args["base_weights"]["path"] == str((work / "base-vit" / "model.safetensors").resolve())
        assert len(args["base_weights"]["sha256"]) == 64 and args["lora"]["rank"] == 4


def test_export_merges_the_adapters_into_a_plain_vit_that_matches_torch(lora_run, make_case, tmp_path):
    _, run_dir, model_dir = lora_run
    spec = json.loads((model_dir / "model.json").read_text())
    assert spec["metrics"]["export_parity_max_abs_difference"] < 1e-4
    graph = onnx.load(str(model_dir / spec["onnx"]))
    assert not [i.name for i in graph.graph.initializer if "lora" in i.name.lower()]
    member, _, _ = load_member(run_dir / "fold_0")
    assert type(member).__name__ == "VisionTransformer" and not any("lora" in n for n in member.state_dict())
    rng = np.random.default_rng(3)
    pages = np.stack([make_patch(rng, atypical=i % 2 == 0) for i in range(3)])
    completed = subprocess.run([sys.executable, str(ROOT / "process.py"), "--input", str(make_case(pages)),
                                "--output", str(tmp_path / "out"), "--model", str(model_dir)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = json.loads((tmp_path / "out" / "multiple-mitotic-figure-classification.json").read_text())
    assert len(result) == 3 and all(0.0 <= r["confidence"] <= 1.0 for r in result)


def test_merged_network_equals_the_adapted_one(lora_run):
    _, run_dir, _ = lora_run
    args = json.loads((run_dir / "fold_1" / "model_args.json").read_text())
    state = load_file(str(run_dir / "fold_1" / "model.safetensors"))
    from training.lora import check_base_weights, load_trained_state

    network = create_classifier(**{k: v for k, v in args.items() if k not in ("lora", "base_weights")},
                                weights=check_base_weights(args["base_weights"]))
    adapted = apply_lora(network, LoraConfig(**args["lora"]))
    load_trained_state(adapted, state)
    base = create_classifier(**{k: v for k, v in args.items() if k not in ("lora", "base_weights")},
                             weights=check_base_weights(args["base_weights"]))
    base.load_state_dict({**base.state_dict(), **{k.removeprefix("base_model.model.").replace(
        ".modules_to_save.default", ""): v for k, v in state.items() if ".head." in k}})
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = adapted.eval()(images)
        merged = rebuild(args, state).eval()(images)
        head_only = base.eval()(images)
    assert torch.allclose(expected, merged, atol=1e-5)
    assert not torch.allclose(head_only, merged, atol=1e-4)  # the adapters trained: they change the output


def test_adapters_refuse_other_base_weights_and_checkpoints_that_do_not_fit(lora_run, tmp_path):
    _, run_dir, _ = lora_run
    args = json.loads((run_dir / "fold_0" / "model_args.json").read_text())
    state = load_file(str(run_dir / "fold_0" / "model.safetensors"))
    other = save_base(tmp_path / "other")  # the same architecture, then one tensor changed
    other_file = other / "model.safetensors"
    tensors = load_file(str(other_file))
    tensors["cls_token"] = tensors["cls_token"] + 1
    save_file(tensors, str(other_file))
    with pytest.raises(LoraError, match="adapters were trained on base weights"):
        rebuild(args, state, base_weights=other)
    with pytest.raises(LoraError, match="fit no place"):
        rebuild(args, {**state, "base_model.model.extra": torch.zeros(1)})
    with pytest.raises(LoraError, match="missing from the checkpoint"):
        rebuild(args, {k: v for k, v in state.items() if "lora_A" not in k})
    deeper = save_base(tmp_path / "deeper", depth=3)
    with pytest.raises(WeightsError, match="does not fit|unexpected"):
        create_classifier(f"timm:{ARCHITECTURE}", backbone_kwargs=TINY, weights=deeper)


def test_lora_needs_local_base_weights(tmp_path):
    from training.lora import lora_args

    with pytest.raises(LoraError, match="needs the base weights as a local file"):
        lora_args(LoraConfig(rank=4), None)
    with pytest.raises(WeightsError, match="local copy only"):
        create_classifier("uni", pretrained=True)


def test_foundation_model_entries_are_complete_and_build_at_our_input_size():
    for name, spec in FOUNDATION_MODELS.items():
        assert spec.source and spec.input_size and len(spec.mean) == len(spec.std) == 3, name
        args = model_args(name)
        assert args["crop"] == spec.input_size <= 128
        with torch.device("meta"):  # full size without allocating it
            network = create_classifier(name)
        assert network.num_classes == 2
        patch = network.patch_embed.patch_size[0]
        assert spec.input_size % patch == 0, name
    small = create_classifier("dinov2_vits14")
    assert small(torch.rand(1, 3, 126, 126)).shape == (1, 2)
    assert backbone_spec("timm:vit_tiny_patch16_224", {"depth": 2}).timm_kwargs == {"depth": 2}
    with pytest.raises(KeyError, match="unknown timm architecture"):
        backbone_spec("timm:no_such_net")


def test_domain_weights_balance_the_domains_of_the_training_part():
    class S:
        def __init__(self, tumour):
            self.domain = {"tumor": tumour}

    samples = [S("a")] * 6 + [S("b")] * 2 + [S("c")]
    train = np.arange(8)  # c is outside the training part
    weights = domain_weights(samples, train, "tumor", "balanced")
    assert weights[train].mean() == pytest.approx(1.0)
    assert weights[0] * 6 == pytest.approx(weights[6] * 2)  # each domain weighs the same in total
    assert domain_weights(samples, train, "tumor", "none") is None
    with pytest.raises(ValueError, match="domain_weighting"):
        domain_weights(samples, train, "tumor", "by_magic")
    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    sample_weight = torch.tensor([1.0, 2.0, 0.5, 1.0])
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = ((1 - torch.exp(-per)) ** 2 * per * sample_weight).sum() / sample_weight.sum()
    assert torch.allclose(focal_loss(logits, labels, sample_weight=sample_weight), expected)
    assert torch.allclose(focal_loss(logits, labels, sample_weight=torch.ones(4)), focal_loss(logits, labels))


def test_a_large_ensemble_keeps_its_weights_beside_the_graph_and_the_container_checks_them(lora_run, make_case,
                                                                                            tmp_path):
    from training.export import export_model

    _, run_dir, small_dir = lora_run
    model_dir = tmp_path / "model"
    spec = export_model([run_dir / "fold_0", run_dir / "fold_1"], model_dir, name="big", external_data=True)
    data = model_dir / "big.onnx.data"
    assert spec["onnx_data"] == data.name and len(spec["onnx_data_sha256"]) == 64
    assert data.stat().st_size > 10 * (model_dir / "big.onnx").stat().st_size  # the weights are outside the graph
    rng = np.random.default_rng(4)
    pages = np.stack([make_patch(rng, atypical=i % 2 == 0) for i in range(3)])
    case = make_case(pages)

    def run(model: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "process.py"), "--input", str(case), "--output",
                               str(tmp_path / model.name / "out"), "--model", str(model)],
                              capture_output=True, text=True, timeout=300)

    def confidences(model: Path) -> list:
        assert run(model).returncode == 0
        output = tmp_path / model.name / "out" / "multiple-mitotic-figure-classification.json"
        return [r["confidence"] for r in json.loads(output.read_text())]

    # the same members with their weights inside the graph give the same probabilities
    assert confidences(model_dir) == pytest.approx(confidences(small_dir), abs=1e-5)
    with data.open("r+b") as handle:  # one flipped byte in the weights
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    damaged = run(model_dir)
    assert damaged.returncode != 0 and "onnx_data_sha256" in damaged.stderr


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients():
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        network = create_classifier(f"timm:{ARCHITECTURE}", backbone_kwargs={**TINY, "img_size": 64})
        network.set_grad_checkpointing(checkpointing)
        wrapped = apply_lora(network, LoraConfig(rank=4, dropout=0.0))
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:  # zero at the start, which would leave lora_A without gradient
                parameter.data.normal_(0, 0.01)
        wrapped.train()(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))).sum().backward()
        gradients.append({n: p.grad for n, p in wrapped.named_parameters() if "lora_" in n})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    assert all(g is not None and torch.allclose(g, gradients[1][n], atol=1e-6) for n, g in gradients[0].items())
