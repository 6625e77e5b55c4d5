import shutil

import pytest
import torch
from torch import nn

from reflow.cifar_resnet import cifar_resnet
from reflow.errors import ReflowError
from reflow.zoo import MODELS, check_checkpoint, get_model, list_models, resolve_checkpoint


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


def checkpoint_label(model: str, checkpoint: str | None, dataset: str) -> str:
    return resolve_checkpoint(model, checkpoint, dataset).key


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
    assert loaded.checkpoint.startswith("sha256:") and loaded.ref.label == "x.pt"
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


def _save(model: nn.Module, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def test_user_checkpoints_are_keyed_by_content_not_file_name(tmp_path) -> None:
    """Two files called model.pt with different weights are two checkpoints; the same weights
    under two names are one."""
    torch.manual_seed(0)
    _save(cifar_resnet(20), tmp_path / "a" / "model.pt")
    _save(cifar_resnet(20), tmp_path / "b" / "model.pt")
    shutil.copy(tmp_path / "a" / "model.pt", tmp_path / "copy.pt")
    a, b, copy = (
        resolve_checkpoint("resnet20", str(tmp_path / f), "synthetic")
        for f in ("a/model.pt", "b/model.pt", "copy.pt")
    )
    assert a.key != b.key and a.label == b.label == "model.pt"
    assert a.key == copy.key and a.key == f"sha256:{a.sha256[:16]}"


def test_a_file_with_a_zoo_checkpoints_content_is_that_checkpoint(shared_home) -> None:
    ref = resolve_checkpoint(
        "resnet20", str(shared_home / "models" / "resnet20_cifar10jpeg.pt"), "cifar10-jpeg"
    )
    assert ref.key == "cifar10-jpeg" and ref.recorded_top1 == 88.44


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path) -> None:
    model = cifar_resnet(20)
    with torch.no_grad():
        model.layer2[1].conv1.weight[0, 0, 0, 0] = float("nan")
    _save(model, tmp_path / "nan.pt")
    with pytest.raises(ReflowError, match=r"'layer2.1.conv1.weight' has 1 non-finite"):
        check_checkpoint("resnet20", str(tmp_path / "nan.pt"), "synthetic")
    with pytest.raises(ReflowError, match="non-finite"):
        get_model("resnet20", str(tmp_path / "nan.pt"))


def test_bad_checkpoint_files_are_one_line_errors(tmp_path) -> None:
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(ReflowError, match="is a directory"):
        check_checkpoint("resnet20", str(tmp_path / "folder.pt"), "synthetic")
    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(ReflowError, match="not a torch file, or truncated"):
        check_checkpoint("resnet20", str(tmp_path / "notes.pt"), "synthetic")
    _save(cifar_resnet(20), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReflowError, match="not a torch file, or truncated"):
        check_checkpoint("resnet20", str(tmp_path / "cut.pt"), "synthetic")
    _save(cifar_resnet(32), tmp_path / "r32.pt")
    with pytest.raises(ReflowError, match=r"does not fit CifarResNet: .*unexpected keys") as err:
        check_checkpoint("resnet20", str(tmp_path / "r32.pt"), "synthetic")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_a_file_changed_after_planning_is_refused(tmp_path) -> None:
    torch.manual_seed(0)
    _save(cifar_resnet(20), tmp_path / "m.pt")
    ref = resolve_checkpoint("resnet20", str(tmp_path / "m.pt"), "synthetic")
    _save(cifar_resnet(20), tmp_path / "m.pt")
    with pytest.raises(ReflowError, match="changed since the run was planned"):
        get_model("resnet20", ref)


def test_prefix_only_zoo_digests_are_pinned_on_first_use(tmp_path, monkeypatch) -> None:
    """torchvision and the akamaster ResNet-44/56/110 publish an 8-hex-digit prefix only: the
    first verified copy's full digest is pinned beside it, and a later replacement that keeps
    the prefix... cannot exist in practice, so the test swaps the pin to stand for it."""
    from reflow.zoo import get_entry, load_checkpoint

    monkeypatch.setenv("REFLOW_HOME", str(tmp_path))
    ckpt = get_entry("resnet44").checkpoint("cifar10")
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / ckpt.file
    _save(cifar_resnet(44), target)
    ref = resolve_checkpoint("resnet44", "cifar10", "cifar10")
    with pytest.raises(ReflowError, match="checksum mismatch"):  # the prefix is checked
        load_checkpoint(ref)
    import reflow.zoo as zoo

    monkeypatch.setattr(zoo, "sha256_of", lambda path: ckpt.sha256 + "0" * 56)
    load_checkpoint(ref)
    pin = target.with_name(target.name + ".sha256")
    assert pin.read_text().strip() == ckpt.sha256 + "0" * 56
    pin.write_text(ckpt.sha256 + "1" * 56)
    with pytest.raises(ReflowError, match="changed since"):
        load_checkpoint(ref)
