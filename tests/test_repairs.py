"""Repairs as a registry: the contract every repair follows, statistics correction against its
definition, and refusals of models a repair cannot work on."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import trained_like
from torch import nn

from reflow.cifar_resnet import cifar_resnet
from reflow.masks import apply_masks, global_masks, prunable_parameters
from reflow.norms import norm_layers, reduce_dims
from reflow.repairs import REPAIRS, RepairContext, get_repair, list_repairs
from reflow.statcorr import ChannelMoments, output_moments


def _batches(n: int = 2, bs: int = 32, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(bs, 3, 32, 32, generator=g), torch.zeros(bs, dtype=torch.long))
        for _ in range(n)
    ]


def _layernorm_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cifar_resnet(20, norm="layer")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(torch.rand(m.num_channels, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_channels, generator=g) * 0.1)
    return model.eval()


def _pruned(model: nn.Module, sparsity: float = 0.8) -> nn.Module:
    pruned = copy.deepcopy(model)
    params = prunable_parameters(pruned)
    apply_masks(pruned, global_masks({n: p.detach().abs() for n, p in params.items()}, sparsity))
    return pruned


def _ctx(batches: list, dense: nn.Module | None = None, calls: list | None = None) -> RepairContext:
    def draw() -> list:
        if calls is not None:
            calls.append(1)
        return batches

    return RepairContext(calibration=draw, dense_model=dense)


@pytest.mark.parametrize("name", list_repairs())
def test_every_repair_changes_no_conv_or_linear_weight(name: str) -> None:
    dense = trained_like(cifar_resnet(20))
    pruned = _pruned(dense)
    before = {n: p.detach().clone() for n, p in prunable_parameters(pruned).items()}
    repair = get_repair(name)
    assert repair.applies_to(pruned) is None
    used = repair.repair(pruned, _ctx(_batches(), dense))
    assert used == (64 if "calibration" in repair.needs else 0)
    for n, p in prunable_parameters(pruned).items():
        assert torch.equal(p, before[n]), f"{name} changed {n}"
    assert all(not m.training for m in pruned.modules())


@pytest.mark.parametrize("make", [_layernorm_resnet, lambda: trained_like(cifar_resnet(20))])
def test_statcorr_matches_the_dense_per_channel_statistics(make) -> None:
    """With one calibration batch the single-pass correction is exact: every normalisation
    layer's per-channel output mean and std in the pruned model equal the dense model's."""
    dense = make()
    pruned = _pruned(dense, 0.8)
    batches = _batches(n=1, bs=64)
    names = list(norm_layers(dense))
    before = output_moments(pruned, batches, names, torch.device("cpu"))
    target = output_moments(dense, batches, names, torch.device("cpu"))
    assert max(float((before[n].std / target[n].std).log().abs().max()) for n in names) > 0.1
    get_repair("statcorr").repair(pruned, _ctx(batches, dense))
    after = output_moments(pruned, batches, names, torch.device("cpu"))
    for n in names:
        torch.testing.assert_close(after[n].mean, target[n].mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(after[n].std, target[n].std, atol=1e-4, rtol=1e-4)


def test_statcorr_on_several_batches_is_close() -> None:
    dense = _layernorm_resnet()
    pruned = _pruned(dense, 0.7)
    batches = _batches(n=4, bs=64)
    get_repair("statcorr").repair(pruned, _ctx(batches, dense))
    names = list(norm_layers(dense))
    after = output_moments(pruned, batches, names, torch.device("cpu"))
    target = output_moments(dense, batches, names, torch.device("cpu"))
    worst = max(float((after[n].std / target[n].std - 1).abs().max()) for n in names)
    assert worst < 0.05


def test_statcorr_on_an_unpruned_model_changes_nothing_measurable() -> None:
    dense = _layernorm_resnet()
    copy_ = copy.deepcopy(dense)
    get_repair("statcorr").repair(copy_, _ctx(_batches(), dense))
    for (n, a), b in zip(dense.state_dict().items(), copy_.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=n)
    x = _batches(n=1)[0][0]
    with torch.no_grad():
        torch.testing.assert_close(dense(x), copy_(x), atol=1e-4, rtol=1e-4)


def test_reduce_dims_keep_the_channel_axis() -> None:
    out = torch.zeros(2, 3, 4, 5)
    assert reduce_dims(nn.BatchNorm2d(3), out) == (0, 2, 3)
    assert reduce_dims(nn.GroupNorm(1, 3), out) == (0, 2, 3)
    assert reduce_dims(nn.LayerNorm(5), out) == (0, 1, 2)


@pytest.mark.parametrize(
    "name", ["reflow", "reflow_mean", "reflow_var", "adabn", "bnt", "reflow+statcorr"]
)
def test_batchnorm_repairs_refuse_a_layernorm_network(name: str) -> None:
    reason = get_repair(name).applies_to(_layernorm_resnet())
    assert reason and "BatchNorm" in reason and "GroupNorm" in reason and "statcorr" in reason


def test_statcorr_refuses_a_network_without_affine_norm_layers() -> None:
    reason = get_repair("statcorr").applies_to(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    assert reason and "no normalisation layer" in reason


def test_the_composite_runs_reflow_then_statcorr_on_one_draw() -> None:
    dense = trained_like(cifar_resnet(20))
    pruned = _pruned(dense)
    calls: list = []
    used = get_repair("reflow+statcorr").repair(pruned, _ctx(_batches(n=1, bs=64), dense, calls))
    assert used == 64 and len(calls) == 1
    assert int(pruned.bn1.num_batches_tracked) == 1  # reflow ran (reset, one batch)
    assert not torch.equal(pruned.bn1.weight, dense.bn1.weight)  # statcorr folded into γ


def test_registered_names_and_options() -> None:
    assert {"none", "reflow", "adabn", "bnt", "statcorr", "reflow+statcorr"} <= set(REPAIRS.names())
    with pytest.raises(Exception, match="has no option"):
        get_repair("statcorr", {"nothing": "1"})
    assert get_repair("statcorr", {"min_std": "0.01"}).config.min_std == 0.01


def test_channel_moments_merge_batches_exactly_and_stably() -> None:
    """Batches of different sizes and means, merged pairwise, give the moments of their
    concatenation (float64 closed form), also for a large mean over a small spread."""
    torch.manual_seed(0)
    parts = [1000.0 + 0.02 * k + 0.01 * torch.randn(n, 3, 4, 4) for k, n in enumerate((5, 1, 17))]
    moments = ChannelMoments()
    for part in parts:
        mean, std = moments.add(part, (0, 2, 3))
    last = parts[-1].double()
    torch.testing.assert_close(mean, last.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(std, last.std((0, 2, 3), correction=0), rtol=1e-3, atol=0)
    everything = torch.cat(parts).double()
    want_std = everything.std((0, 2, 3), correction=0)
    torch.testing.assert_close(moments.mean, everything.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(moments.std, want_std, rtol=1e-3, atol=0)
    assert moments.count == 23 * 16


def _statistics(model: nn.Module, which: str) -> dict[str, torch.Tensor]:
    return {
        n: getattr(m, which).clone()
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    }


def test_reflow_mean_and_reflow_var_split_reflow_exactly() -> None:
    """The 2 × 2 ablation of the mechanism: each re-estimates one statistic and leaves the
    other bit-identical; applied together (either order) they are REFLOW, bit for bit."""
    dense = trained_like(cifar_resnet(20))
    pruned = _pruned(dense)
    batches = _batches(n=2, bs=32)
    results = {}
    for names in (("reflow",), ("reflow_mean",), ("reflow_var",), ("reflow_mean", "reflow_var")):
        model = copy.deepcopy(pruned)
        for name in names:
            get_repair(name).repair(model, _ctx(batches))
        results[names] = model
    for which, kept_by in (("running_var", "reflow_mean"), ("running_mean", "reflow_var")):
        kept, before = _statistics(results[(kept_by,)], which), _statistics(pruned, which)
        assert all(torch.equal(kept[n], before[n]) for n in before), kept_by
        changed = _statistics(results[("reflow",)], which)
        assert not all(torch.equal(changed[n], before[n]) for n in before)
    both, full = results[("reflow_mean", "reflow_var")], results[("reflow",)]
    for which in ("running_mean", "running_var"):
        a, b = _statistics(both, which), _statistics(full, which)
        assert all(torch.equal(a[n], b[n]) for n in a), which
    also = copy.deepcopy(pruned)
    for name in ("reflow_var", "reflow_mean"):
        get_repair(name).repair(also, _ctx(batches))
    assert all(
        torch.equal(x, y)
        for which in ("running_mean", "running_var")
        for x, y in zip(
            _statistics(also, which).values(), _statistics(full, which).values(), strict=True
        )
    )
