import copy

import pytest
import torch
from torch import nn

from reflow.errors import ReflowError
from reflow.norms import batchnorm_layers
from reflow.recalibrate import recalibrate_bn, reflow, select_layers
from reflow.repairs import RepairContext, get_repair


def apply_repair(name: str, model: nn.Module, batches: list) -> int:
    return get_repair(name).repair(model, RepairContext(calibration=lambda: batches))


def _batches(n: int = 4, bs: int = 16, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(bs, 3, 32, 32, generator=g), torch.zeros(bs, dtype=torch.long))
        for _ in range(n)
    ]


def test_reflow_changes_no_parameter_bit_for_bit(tiny_model: nn.Module) -> None:
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    reflow(tiny_model, _batches())
    for name, p in tiny_model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.grad is None


def test_reflow_is_exact_cumulative_average(tiny_model: nn.Module) -> None:
    batches = _batches(n=5)
    reflow(tiny_model, batches)
    # Inputs of the first BN are conv1 outputs, which do not depend on other BN layers.
    conv_out = [tiny_model.conv1(x) for x, _ in batches]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in conv_out])
    variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in conv_out])
    torch.testing.assert_close(tiny_model.bn1.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tiny_model.bn1.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
    assert int(tiny_model.bn1.num_batches_tracked) == 5


def test_reflow_does_not_depend_on_old_statistics(tiny_model: nn.Module) -> None:
    other = copy.deepcopy(tiny_model)
    for bn in batchnorm_layers(other).values():
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(3.0)
    reflow(tiny_model, _batches())
    reflow(other, _batches())
    for (n, a), b in zip(tiny_model.named_buffers(), other.buffers(), strict=True):
        assert torch.equal(a, b), n


def test_modes_and_momentum_restored(tiny_model: nn.Module) -> None:
    tiny_model.eval()
    tiny_model.layer1.train()  # a mixed state must come back exactly
    modes = {n: m.training for n, m in tiny_model.named_modules()}
    reflow(tiny_model, _batches(n=1))
    assert {n: m.training for n, m in tiny_model.named_modules()} == modes
    assert all(bn.momentum == 0.1 for bn in batchnorm_layers(tiny_model).values())


def test_only_bn_layers_run_in_train_mode() -> None:
    seen: dict[str, bool] = {}
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten())

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen[name] = module.training

        return hook

    model[2].register_forward_hook(record("dropout"))
    model[1].register_forward_hook(record("bn"))
    reflow(model, _batches(n=1))
    assert seen == {"dropout": False, "bn": True}


def test_last_k_layers_only(tiny_model: nn.Module) -> None:
    before = {n: bn.running_mean.clone() for n, bn in batchnorm_layers(tiny_model).items()}
    recalibrate_bn(tiny_model, _batches(n=2), layers="last:3")
    names = list(before)
    for name, bn in batchnorm_layers(tiny_model).items():
        changed = not torch.equal(bn.running_mean, before[name])
        assert changed == (name in names[-3:]), name


def test_select_layers_rejects_bad_spec() -> None:
    assert select_layers(["a", "b", "c"], "first:2") == ["a", "b"]
    with pytest.raises(ReflowError, match="first:K"):
        select_layers(["a"], "middle:1")
    with pytest.raises(ReflowError, match="has 1"):
        select_layers(["a"], "last:5")


def test_adabn_keeps_history_bnt_resets(tiny_model: nn.Module) -> None:
    adabn, bnt = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    for m in (adabn, bnt):
        m.bn1.num_batches_tracked.fill_(100)
    old_mean = tiny_model.bn1.running_mean.clone()
    apply_repair("adabn", adabn, _batches(n=1))
    apply_repair("bnt", bnt, _batches(n=1))
    assert int(adabn.bn1.num_batches_tracked) == 101
    assert int(bnt.bn1.num_batches_tracked) == 1
    # One EMA step from the old statistics versus from a reset (mean 0).
    batch_mean = tiny_model.conv1(_batches(n=1)[0][0]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(adabn.bn1.running_mean, 0.9 * old_mean + 0.1 * batch_mean)
    torch.testing.assert_close(bnt.bn1.running_mean, 0.1 * batch_mean)


def test_none_repair_is_a_no_op(tiny_model: nn.Module) -> None:
    before = copy.deepcopy(tiny_model.state_dict())
    assert apply_repair("none", tiny_model, _batches()) == 0
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_model_without_batchnorm_is_a_clear_error() -> None:
    with pytest.raises(ReflowError, match="no BatchNorm layer"):
        reflow(nn.Sequential(nn.Conv2d(3, 4, 3)), _batches(n=1))


def test_unknown_repair_lists_valid(tiny_model: nn.Module) -> None:
    with pytest.raises(ReflowError, match=r"valid repairs: adabn, .*bnt, none, reflow, reflow"):
        apply_repair("magic", tiny_model, [])
