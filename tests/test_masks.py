import pytest
import torch
import torchvision
from torch.nn.utils import prune

from reflow.cifar_resnet import cifar_resnet
from reflow.errors import ReflowError
from reflow.masks import (
    apply_masks,
    global_masks,
    hamming_distance,
    layer_densities,
    layerwise_masks,
    prunable_parameters,
    sparsity_of,
)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.97])
@pytest.mark.parametrize("scope", ["all", "blocks", "chita"])
def test_mp_mask_equals_torch_global_unstructured(sparsity: float, scope: str) -> None:
    torch.manual_seed(1)
    model = cifar_resnet(20)
    params = prunable_parameters(model, scope)
    ours = global_masks({n: p.detach().abs() for n, p in params.items()}, sparsity)

    modules = dict(model.named_modules())
    targets = [(modules[n.rsplit(".", 1)[0]], "weight") for n in params]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for (module, _), name in zip(targets, params, strict=True):
        assert torch.equal(ours[name], module.weight_mask.bool()), name


def test_scopes_on_resnet_with_downsample() -> None:
    model = torchvision.models.resnet18()
    every = set(prunable_parameters(model, "all"))
    blocks = set(prunable_parameters(model, "blocks"))
    chita = set(prunable_parameters(model, "chita"))
    assert {"conv1.weight", "fc.weight", "layer2.0.downsample.0.weight"} <= every
    assert "conv1.weight" not in blocks and "fc.weight" not in blocks
    assert not any("downsample" in n for n in blocks | chita)
    assert {"conv1.weight", "fc.weight"} <= chita
    assert blocks < chita < every


def test_cifar_resnet20_scope_sizes() -> None:
    model = cifar_resnet(20)
    assert len(prunable_parameters(model, "all")) == 20  # 19 convs + linear
    assert len(prunable_parameters(model, "blocks")) == 18
    total = sum(p.numel() for p in prunable_parameters(model, "all").values())
    assert total == 268_336


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range_is_a_clear_error(bad: float) -> None:
    with pytest.raises(ReflowError, match=r"sparsity must be in \[0, 1\)"):
        global_masks({"w": torch.rand(10)}, bad)


def test_unknown_scope_lists_valid() -> None:
    with pytest.raises(ReflowError, match="valid scopes: all, blocks, chita"):
        prunable_parameters(cifar_resnet(20), "heads")


def test_layerwise_prunes_each_layer_equally() -> None:
    scores = {"a": torch.rand(100), "b": torch.rand(40, 5) * 100}
    masks = layerwise_masks(scores, 0.3)
    assert layer_densities(masks) == pytest.approx({"a": 0.7, "b": 0.7})


def test_global_masks_keep_highest_and_report_sparsity() -> None:
    scores = {"a": torch.tensor([1.0, 5.0, 3.0]), "b": torch.tensor([[4.0, 2.0]])}
    masks = global_masks(scores, 0.4)
    assert masks["a"].tolist() == [False, True, True]
    assert masks["b"].tolist() == [[True, False]]
    report = sparsity_of(masks)
    assert (report.pruned, report.total) == (2, 5)


def test_apply_masks_zeroes_exactly_the_pruned_weights() -> None:
    model = cifar_resnet(20)
    params = prunable_parameters(model)
    masks = global_masks({n: p.detach().abs() for n, p in params.items()}, 0.5)
    apply_masks(model, masks)
    for name, p in prunable_parameters(model).items():
        assert torch.all(p[~masks[name]] == 0)
        assert torch.all(p[masks[name]] != 0)


def test_hamming_distance() -> None:
    a = {"w": torch.tensor([True, True, False, False])}
    b = {"w": torch.tensor([True, False, True, False])}
    assert hamming_distance(a, a) == 0.0
    assert hamming_distance(a, b) == 0.5


def test_ties_at_the_threshold_still_prune_exactly_k() -> None:
    scores = {"a": torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0]), "b": torch.tensor([2.0, 0.5])}
    masks = global_masks(scores, 0.5)  # round(3.5) = 4 pruned: 0.5, 1.0 and two of the four 2.0s
    assert sparsity_of(masks).pruned == 4
    assert not masks["b"][1] and not masks["a"][0] and masks["a"][4]
    assert int((~masks["a"][1:4]).sum()) + int(~masks["b"][0]) == 2
