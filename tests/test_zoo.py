import shutil

import pytest
import torch
from torch import nn

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


def test_mobilenet_v1_is_the_depthwise_cifar_layout() -> None:
    model = MODELS.get("mobilenet_v1").build(10)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(3.2, abs=0.05)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and all(m.groups == m.in_channels for m in depthwise)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_ln_keeps_names_and_has_no_running_statistics() -> None:
    ln, bn = MODELS.get("resnet20_ln").build(10), cifar_resnet(20)
    assert [n for n, _ in ln.named_parameters()] == [n for n, _ in bn.named_parameters()]
    assert isinstance(ln.layer3[2].bn2, nn.GroupNorm) and ln.layer3[2].bn2.num_groups == 1
    assert not [m for m in ln.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_default_checkpoints_of_the_new_entries() -> None:
    assert checkpoint_label("mobilenet_v1", None, "cifar10-jpeg") == "cifar10-jpeg"
    assert checkpoint_label("resnet20_ln", None, "cifar10-jpeg") == "cifar10-jpeg"


def test_entries_carry_provenance() -> None:
    for _, entry in MODELS.items():
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
        ("resnet20_ln", "cifar10-jpeg"),
        ("mobilenet_v1", "cifar10-jpeg"),
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
