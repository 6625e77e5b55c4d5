"""The layer-wise seam and OBC, SparseGPT and Wanda against closed forms and brute force."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from reflow.baselines.layerwise import (
    LayerHessian,
    input_columns,
    layer_targets,
    prunable_modules,
    reconstruction_error,
    run_layerwise,
    weight_rows,
)
from reflow.baselines.obc import (
    allocate,
    greedy_removal,
    prepare,
    reconstruct,
    working_bytes,
)
from reflow.baselines.sparsegpt import sparsegpt_rows
from reflow.baselines.wanda import wanda_keep
from torch import nn

from reflow import baselines
from reflow.masks import global_masks, prunable_parameters, sparsity_of


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, stride=1, padding=1, bias=False),
        nn.Conv2d(4, 6, 3, stride=2, padding=0, bias=False),
        nn.Conv2d(4, 6, 3, stride=1, padding=2, dilation=2, bias=False),
        nn.Conv2d(4, 6, (1, 3), stride=(2, 1), padding=(0, 1), bias=False),
        nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),  # depthwise
        nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),
    ],
    ids=["plain", "stride2", "dilation2", "rect", "depthwise", "grouped"],
)
def test_unfold_product_equals_conv2d(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, 9, 9)
    cols = input_columns(conv, x)  # (groups, d, N·L)
    out = weight_rows(conv) @ cols  # (groups, rows, N·L)
    expected = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    b, c, h, w = expected.shape
    got = out.reshape(conv.groups, -1, b, h * w).permute(2, 0, 1, 3).reshape(b, c, h, w)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_hessian_is_two_x_xt_over_n_across_batches() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    xs = [torch.randn(2, 3, 5, 5), torch.randn(3, 3, 5, 5)]
    acc = LayerHessian(conv, torch.float64)
    for x in xs:
        acc.add_batch(x)
    cols = torch.cat([input_columns(conv, x) for x in xs], dim=-1).double()
    torch.testing.assert_close(acc.hessian, 2 * cols @ cols.transpose(-1, -2) / 5)
    diag = LayerHessian(conv, torch.float64, diagonal_only=True)
    for x in xs:
        diag.add_batch(x)
    torch.testing.assert_close(diag.hessian, acc.hessian.diagonal(dim1=-2, dim2=-1))


def _spd(d: int, seed: int, samples: int = 40) -> torch.Tensor:
    x = torch.randn(d, samples, generator=torch.Generator().manual_seed(seed)).double()
    return 2 * x @ x.T / samples


def _literal_greedy(w: torch.Tensor, h: torch.Tensor, steps: int) -> torch.Tensor:
    """The issue's ExactOBS step, written out: remove argmin w_j²/[H⁻¹]_jj, update the row by
    −H⁻¹_{:,j}·w_j/[H⁻¹]_jj, downdate H⁻¹ exactly."""
    w, hinv = w.clone(), torch.linalg.inv(h)
    removed = torch.zeros_like(w, dtype=torch.bool)
    for _ in range(steps):
        scores = (w.square() / hinv.diagonal()).masked_fill(removed, torch.inf)
        j = int(scores.argmin())
        w -= hinv[:, j] * w[j] / hinv[j, j]
        removed[j] = True
        w[removed] = 0.0  # as the reference: removed weights stay exactly zero
        hinv -= torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return w


def test_obc_rows_equal_the_least_squares_solution_on_their_support() -> None:
    d = 10
    h = _spd(d, 0)
    rows = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    order, losses = greedy_removal(rows, torch.linalg.inv(h).expand(3, d, d).clone())
    for r, steps in itertools.product(range(3), (1, 4, 7, 9)):
        greedy = _literal_greedy(rows[r], h, steps)
        keep = torch.ones(d, dtype=torch.bool)
        keep[order[r, :steps]] = False
        assert torch.equal(keep, greedy != 0)  # greedy_removal took the same weights
        closed = reconstruct(rows[r : r + 1], h.unsqueeze(0), keep.unsqueeze(0))[0]
        torch.testing.assert_close(closed, greedy, atol=1e-9, rtol=1e-9)
        delta = closed - rows[r]
        assert float(losses[r, :steps].sum()) == pytest.approx(
            float(0.5 * delta @ h @ delta), rel=1e-9
        )


def test_obc_allocation_and_dead_inputs() -> None:
    losses = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4]])
    assert allocate(losses, 3).tolist() == [1, 2]  # the three smallest: 0.1 | 0.2, 0.3
    h = _spd(4, 2)
    h[1, :] = 0
    h[:, 1] = 0  # an input that never fires
    prepared, rows, _, _ = prepare(h.unsqueeze(0), torch.ones(1, 2, 4, dtype=torch.float64), 0.0)
    assert float(prepared[0, 1, 1]) == 1.0 and bool((rows[..., 1] == 0).all())


def test_obc_rows_share_their_group_inverse_without_copying_it_per_row() -> None:
    """Rows of one group downdate private copies of that group's H⁻¹, made a batch at a time:
    the same removal as handing every row its own copy, for any batch size."""
    d, groups = 6, torch.tensor([0, 0, 1, 1, 1])
    inverse = torch.stack([torch.linalg.inv(_spd(d, s)) for s in (3, 4)])
    before = inverse.clone()
    rows = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    order, losses = greedy_removal(rows, inverse[groups].clone(), parallel=5)
    for parallel in (1, 2, 5):
        shared = greedy_removal(rows, inverse, parallel, group_of_row=groups)
        assert torch.equal(shared[0], order)
        torch.testing.assert_close(shared[1], losses, atol=1e-12, rtol=1e-12)
    assert torch.equal(inverse, before)


def test_obc_memory_need_counts_its_working_set_per_batch_not_per_row() -> None:
    """One ResNet-50-sized layer (512 rows over 4,608 columns): the guard counts the greedy
    pass's parallel·d² copies, not 512·d² (43 GB, what a per-row copy would take)."""
    layer = nn.Sequential(nn.Conv2d(512, 512, 3, bias=False))
    d = 512 * 9
    need = baselines.get_method("obc", {"parallel": "32"}).memory_needed(layer, "all")
    hessian = d * d * 8
    assert need.nbytes == hessian + working_bytes(1, 512, d, 32)
    assert 32 * d * d * 4 <= need.nbytes - hessian < 512 * d * d * 4
    assert "obc.parallel" in need.lower


def test_sparsegpt_losses_sum_to_the_reconstruction_error() -> None:
    """½ tr(ΔW H ΔWᵀ) with the damped H, for the mask SparseGPT chooses block by block."""
    d, rows, damp = 20, 5, 0.01
    h = _spd(d, 3).unsqueeze(0)
    w = torch.randn(1, rows, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    new, keep, loss = sparsegpt_rows(h, w, 60, damp, blocksize=8)
    damped = h.clone()
    damped.diagonal(dim1=-2, dim2=-1).add_(damp * h.diagonal(dim1=-2, dim2=-1).mean())
    assert loss == pytest.approx(reconstruction_error(w - new, damped), rel=1e-9)
    assert bool((new[~keep] == 0).all())
    assert int((~keep).sum()) == 60


def test_wanda_is_the_best_no_update_mask_when_x_xt_is_diagonal() -> None:
    d, rows, prune = 8, 4, 5
    gen = torch.Generator().manual_seed(6)
    scales = torch.rand(d, generator=gen).double() + 0.1
    q, _ = torch.linalg.qr(torch.randn(50, d, generator=gen).double())
    x = (q * scales).T  # rows orthogonal: XXᵀ = diag(scales²)
    w = torch.randn(1, rows, d, generator=gen).double()
    keep = wanda_keep(w, x.norm(dim=1).unsqueeze(0), prune * rows)
    for r in range(rows):
        best = min(
            itertools.combinations(range(d), prune),
            key=lambda p: float((w[0, r, list(p)] @ x[list(p)]).square().sum()),
        )
        expected = torch.ones(d, dtype=torch.bool)
        expected[list(best)] = False
        assert torch.equal(keep[0, r], expected)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def _batches(n: int = 4) -> list:
    gen = torch.Generator().manual_seed(7)
    return [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.zeros(8, dtype=torch.long)) for _ in range(n)
    ]


def test_sequential_inputs_come_from_the_pruned_layers_before() -> None:
    """In sequential mode layer 2 is captured on what the pruned layer 1 emits; in dense mode on
    what the dense one emits."""
    seen = {}

    def solver(name, module, lh, target):
        seen.setdefault(mode, {})[name] = lh.hessian.clone()
        with torch.no_grad():
            module.weight.mul_(0.5)  # any change to an earlier layer must reach later inputs
        return {}

    for mode in ("dense", "sequential"):
        net = _small_net()
        params = prunable_parameters(net)
        run_layerwise(
            net,
            params,
            _batches(),
            {n: 0.5 for n in params},
            solver,
            mode,
            torch.device("cpu"),
            torch.float64,
        )
    first, second = "0.weight", "3.weight"
    torch.testing.assert_close(seen["dense"][first], seen["sequential"][first])
    torch.testing.assert_close(seen["sequential"][second], seen["dense"][second] / 4)


@pytest.mark.parametrize("name", ["obc", "sparsegpt", "sparsegpt_s", "wanda"])
@pytest.mark.parametrize("allocation", ["uniform", "mp"])
def test_layerwise_methods_on_depthwise_and_linear_layers(name: str, allocation: str) -> None:
    net = _small_net()
    method = baselines.get_method(
        name, {"samples": "32", "batch_size": "8", "allocation": allocation}
    )
    params = prunable_parameters(net)
    targets = layer_targets(params, 0.6, allocation)
    ctx = baselines.PruneContext(
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        activation_sample=lambda n, bs: _batches(n),
    )
    result = method.prune(copy.deepcopy(net), 0.6, ctx)
    for layer, mask in result.masks.items():
        expected = round(targets[layer] * mask.numel())
        assert int((~mask).sum()) == expected, layer
    if allocation == "mp":
        mp = global_masks({n: p.detach().abs() for n, p in params.items()}, 0.6)
        assert sparsity_of(result.masks).pruned == sparsity_of(mp).pruned
    if name in ("obc", "sparsegpt"):  # with an update: no worse than the magnitude mask
        for layer, facts in result.layer_info.items():
            assert facts["recon_error"] <= facts["recon_error_magnitude"] * (1 + 1e-9), layer


def test_prunable_modules_map_weights_to_layers() -> None:
    net = _small_net()
    modules = prunable_modules(net, prunable_parameters(net))
    assert modules["3.weight"] is net[3] and modules["9.weight"] is net[9]


@pytest.mark.parametrize("name", ["obc", "sparsegpt", "sparsegpt_s", "wanda"])
@pytest.mark.parametrize("text", ["2:4", "1:4"])
def test_layerwise_methods_follow_n_m_patterns(name: str, text: str) -> None:
    """N of every M consecutive input channels kept at each kernel position; the 3-channel stem
    and the depthwise conv (one input channel per group) stay dense."""
    from reflow.masks import Pattern, follows_pattern

    pattern = Pattern.parse(text)
    net = _small_net()
    method = baselines.get_method(name, {"samples": "32", "batch_size": "8"})
    ctx = baselines.PruneContext(
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        activation_sample=lambda n, bs: _batches(n),
        pattern=pattern,
    )
    result = method.prune(copy.deepcopy(net), pattern.sparsity, ctx)
    assert follows_pattern(result.masks, pattern)
    assert bool(result.masks["0.weight"].all()) and bool(result.masks["3.weight"].all())
    pruned = result.masks["6.weight"]  # the 1x1 conv, 8 input channels
    assert float(pruned.float().mean()) == pattern.n / pattern.m
    if name in ("obc", "sparsegpt"):
        for layer, facts in result.layer_info.items():
            assert facts["recon_error"] <= facts["recon_error_magnitude"] * (1 + 1e-9) or (
                layer in ("0.weight", "3.weight")
            )
