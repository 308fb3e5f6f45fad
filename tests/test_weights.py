"""Pretrained-weight loading, proven with weight files the tests make in each supported layout."""

import pytest
import torch
from safetensors.torch import save_file

from training.models import WeightsError, create_classifier, load_pretrained, read_state_dict
from training.torch_compat import import_timm

timm = import_timm()


def lunit_release_state_dict() -> dict:
    """What Lunit's dino_vit_small_patch8_ep200.torch holds: timm ViT-S/8 at 224 px with no head."""
    torch.manual_seed(0)
    network = timm.models.vision_transformer.VisionTransformer(
        img_size=224, patch_size=8, embed_dim=384, num_heads=6, num_classes=0)
    return network.state_dict()


@pytest.fixture(scope="module")
def lunit_state():
    return lunit_release_state_dict()


def assert_all_but_head_equal(network, state, skip=()):
    own = network.state_dict()
    compared = 0
    for key, value in state.items():
        if key.startswith("head") or key in skip:
            continue
        assert torch.equal(own[key], value), key
        compared += 1
    assert compared > 100


def test_lunit_release_checkpoint_loads_at_128_px(tmp_path, lunit_state):
    path = tmp_path / "dino_vit_small_patch8_ep200.torch"
    torch.save(lunit_state, path)
    network = create_classifier("lunit_vits8", weights=path)
    assert network.pos_embed.shape == (1, 1 + 16 * 16, 384)  # 224 px grid (28x28) resized to 128 px (16x16)
    assert_all_but_head_equal(network, lunit_state, skip=("pos_embed",))
    assert torch.equal(network.pos_embed[0, 0], lunit_state["pos_embed"][0, 0])  # the class token's own slot
    assert network(torch.rand(1, 3, 128, 128)).shape == (1, 2)


def test_dino_training_checkpoint_layout_loads(tmp_path, lunit_state):
    teacher = {f"backbone.{k}": v for k, v in lunit_state.items()}
    teacher["head.mlp.0.weight"] = torch.zeros(2048, 384)  # DINO's projection head: not part of the classifier
    teacher["head.last_layer.weight_g"] = torch.zeros(65536, 1)
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "student": {}, "epoch": 100}, path)
    network = create_classifier("lunit_vits8", weights=path)
    assert_all_but_head_equal(network, lunit_state, skip=("pos_embed",))


def test_hub_snapshot_folder_loads(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("convnext_atto", num_classes=1000)  # the convnext code path, small
    folder = tmp_path / "snapshot"
    folder.mkdir()
    save_file(source.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    network = create_classifier("convnext_atto", weights=folder)
    assert_all_but_head_equal(network, source.state_dict())
    assert network.get_classifier().out_features == 2


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, lunit_state):
    path = tmp_path / "vit.torch"
    torch.save(lunit_state, path)
    with pytest.raises(WeightsError, match="does not fit ConvNeXt"):
        create_classifier("convnext_atto", weights=path)


def test_a_checkpoint_missing_a_block_is_refused(tmp_path, lunit_state):
    partial = {k: v for k, v in lunit_state.items() if not k.startswith("blocks.11.")}
    path = tmp_path / "partial.torch"
    torch.save(partial, path)
    with pytest.raises(WeightsError, match=r"weights missing \(e.g. \['blocks.11"):
        create_classifier("lunit_vits8", weights=path)


def test_folder_with_several_candidates_is_ambiguous(tmp_path):
    for name in ("a.pth", "b.pth"):
        torch.save({}, tmp_path / name)
    with pytest.raises(WeightsError, match="expected one weight file"):
        read_state_dict(tmp_path)
    with pytest.raises(WeightsError, match="no such weight file"):
        read_state_dict(tmp_path / "absent.pth")


def test_pretrained_without_network_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="hf-hub:1aurent/vit_small_patch8_224.lunit_dino .*pass --weights PATH"):
        create_classifier("lunit_vits8", pretrained=True)


def test_backbones_without_pretrained_weights_say_so():
    with pytest.raises(WeightsError, match="no pretrained weights"):
        create_classifier("resnet10t_slim", pretrained=True)


def test_load_reports_the_new_head(lunit_state, tmp_path):
    path = tmp_path / "w.torch"
    torch.save(lunit_state, path)
    network = timm.create_model("vit_small_patch8_224", img_size=128, num_classes=2)
    report = load_pretrained(network, path)
    assert sorted(report["new"]) == ["head.bias", "head.weight"]
