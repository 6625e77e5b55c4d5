import shutil

import pytest
import torch

from reflow.cifar_resnet import cifar_resnet
from reflow.errors import ReflowError
from reflow.zoo import MODELS, checkpoint_label, get_model, list_models


def test_list_models_covers_cifar_and_torchvision() -> None:
    names = set(list_models())
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} <= names
    assert {
        "resnet50",
        "resnet101",
        "resnet152",
        "mobilenet_v2",
        "resnext101_64x4d",
        "regnet_x_32gf",
    } <= names


@pytest.mark.parametrize(("depth", "params"), [(20, 0.27), (32, 0.46), (56, 0.85), (110, 1.73)])
def test_cifar_resnet_sizes_match_the_paper(depth: int, params: float) -> None:
    count = sum(p.numel() for p in cifar_resnet(depth).parameters()) / 1e6
    assert count == pytest.approx(params, abs=0.01)


def test_entries_carry_provenance() -> None:
    for entry in MODELS.values():
        for ckpt in entry.checkpoints:
            assert ckpt.file and ckpt.sha256 and ckpt.dense_top1 and ckpt.accuracy_source


def test_default_checkpoint_is_the_one_trained_for_the_data() -> None:
    assert checkpoint_label("resnet20", None, "cifar10-jpeg") == "cifar10-jpeg"
    assert checkpoint_label("resnet20", None, "cifar10") == "cifar10"
    assert checkpoint_label("resnet50", None, "synthetic") == "none"


def test_shared_checkpoints_load_and_verify(shared_home) -> None:
    for name, ckpt in [
        ("resnet20", "cifar10-jpeg"),
        ("resnet20", "cifar10"),
        ("resnet32", "cifar10"),
    ]:
        loaded = get_model(name, ckpt, "cifar10-jpeg")
        assert loaded.checkpoint == ckpt and not loaded.model.training


def test_checksum_mismatch_is_a_clear_error(shared_home, tmp_path, monkeypatch) -> None:
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "resnet20_cifar10jpeg.pt"
    shutil.copy(shared_home / "models" / "resnet20_cifar10jpeg.pt", target)
    with target.open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setenv("REFLOW_HOME", str(tmp_path))
    with pytest.raises(ReflowError, match=r"checksum mismatch .* expected sha256 9b4e9a02"):
        get_model("resnet20", "cifar10-jpeg")


def test_missing_checkpoint_names_paths_and_remedy(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REFLOW_HOME", str(tmp_path))
    with pytest.raises(
        ReflowError, match=f"tried {tmp_path}/models/resnet20_cifar10jpeg.pt.*REFLOW_HOME"
    ):
        get_model("resnet20", "cifar10-jpeg")


def test_any_compatible_state_dict_by_path(tmp_path) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(20)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "x.pt"
    )
    loaded = get_model("resnet20", str(tmp_path / "x.pt"))
    assert loaded.checkpoint == "x.pt"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ReflowError, match="does not fit CifarResNet"):
        get_model("resnet20", str(tmp_path / "bad.pt"))
    with pytest.raises(ReflowError, match="checkpoint file not found"):
        get_model("resnet20", str(tmp_path / "missing.pt"))


def test_unknown_checkpoint_name_lists_valid() -> None:
    with pytest.raises(ReflowError, match=r"valid checkpoint for resnet20s: .*cifar10-jpeg"):
        get_model("resnet20", "imagenet")
