"""Bias correction for pruning against closed forms and sampling: E[ReLU(y)] of a Gaussian, and a
toy Conv-BN-ReLU-Conv-BN network whose first BN output is exactly Gaussian, where the analytic
and empirical corrections agree and both restore the pruned layer's mean pre-BN output."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reflow.biascorr import correct_bias, links, relu_gaussian_mean
from reflow.cifar_resnet import cifar_resnet
from reflow.repairs import RepairContext, get_repair


def test_relu_of_a_gaussian_has_the_closed_form_mean() -> None:
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0])
    std = torch.tensor([0.5, 1.0, 2.0, 0.3, 1.5])
    samples = torch.randn(400_000, 5, generator=g, dtype=torch.float64) * std + mean
    empirical = samples.clamp(min=0).mean(0)
    error = samples.clamp(min=0).std(0) / 400_000**0.5
    analytic = relu_gaussian_mean(mean.double(), std.double())
    assert ((analytic - empirical).abs() < 4 * error).all(), (analytic, empirical)
    assert relu_gaussian_mean(torch.tensor([0.3, -0.3]), torch.zeros(2)).tolist() == [
        pytest.approx(0.3),
        0.0,
    ]


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(6, eps=0.0)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def _toy() -> Toy:
    torch.manual_seed(0)
    model = Toy().eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([1.0, 0.5, 2.0, 0.8, 1.2, 0.3]))
        model.bn1.bias.copy_(torch.tensor([0.5, -0.4, 0.1, 1.0, -1.0, 0.0]))
        # iid N(0, 1) pixels through a 1x1 conv: N(0, |w_c|²) exactly
        model.bn1.running_mean.zero_()
        model.bn1.running_var.copy_(model.conv1.weight.flatten(1).square().sum(1))
        model.bn2.running_mean.copy_(_pre_bn2_mean(model))
    return model


@torch.no_grad()
def _pre_bn2_mean(model: Toy, n: int = 4000, seed: int = 1) -> torch.Tensor:
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return model.conv2(torch.relu(model.bn1(model.conv1(x)))).mean(dim=(0, 2, 3))


def _pruned(model: Toy) -> Toy:
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        w = pruned.conv2.weight
        w.mul_(w.abs() > w.abs().flatten().median())
    return pruned


def test_analytic_and_empirical_bias_correction_restore_the_mean() -> None:
    dense = _toy()
    assert links(dense)[-1].upstream_bn == "bn1" and links(dense)[-1].bn == "bn2"
    truth = _pre_bn2_mean(_pruned(dense), seed=2)  # what the pruned layer really outputs
    shift = truth - dense.bn2.running_mean
    assert shift.abs().max() > 0.05  # pruning moved the mean: there is something to correct
    batches = [
        (torch.randn(500, 3, 8, 8, generator=torch.Generator().manual_seed(3 + i)), None)
        for i in range(4)
    ]
    corrected = {}
    for source in ("analytic", "empirical"):
        model = _pruned(dense)
        counts = correct_bias(model, dense, source, batches if source == "empirical" else None)
        assert counts == {"corrected": 1, "skipped": 0}
        corrected[source] = model.bn2.running_mean.clone()
        assert torch.allclose(corrected[source], truth, atol=0.02), (source, corrected, truth)
    assert torch.allclose(corrected["analytic"], corrected["empirical"], atol=0.02)


def test_biascorr_as_a_repair_on_resnet20() -> None:
    """The analytic form needs no data: the harness draws no calibration image for it; the
    first conv (reading the image) and the block convs reading a residual sum are skipped; every
    block's second conv, and the first block's first conv (reading the stem's ReLU(BN)), are
    corrected."""
    dense = cifar_resnet(20).eval()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(m.weight.abs() > m.weight.abs().flatten().quantile(0.7))
    repair = get_repair("biascorr")
    assert "calibration" not in repair.needs
    before = pruned.layer1[0].bn2.running_mean.clone()
    assert repair.repair(pruned, RepairContext(calibration=None, dense_model=dense)) == 0
    assert not torch.equal(pruned.layer1[0].bn2.running_mean, before)
    counts = correct_bias(copy.deepcopy(pruned), dense)
    assert counts == {"corrected": 10, "skipped": 9}
    assert "calibration" in get_repair("biascorr", {"source": "empirical"}).needs
