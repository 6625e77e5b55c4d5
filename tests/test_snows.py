"""SNOWS against closed forms on tiny networks: with K = the layer's own output it is the
least-squares fit on its support (our OBC reconstruction), its Hessian-vector products are the
explicit Hessian's, the K-step loss falls, the capped magnitude mask, and the start mask taken
from another method."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_data, trained_like
from reflow.baselines.obc import reconstruct
from reflow.baselines.snows import Window, block_of, kstep_loss, masked_hvp
from torch import nn

from reflow import baselines
from reflow.masks import sparsity_of
from reflow.timing import PhaseTimer


def _vectors(n: int, d: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g, dtype=torch.float64), torch.zeros(n, dtype=torch.long))]


def _ctx(batches_of, scope: str = "all") -> baselines.PruneContext:
    return baselines.PruneContext(
        torch.Generator(),
        torch.device("cpu"),
        scope,
        activation_sample=batches_of,
        train_sample=batches_of,
        timer=PhaseTimer(),
    )


def test_with_k_one_snows_is_the_least_squares_fit_on_the_support() -> None:
    """K = 1 (the layer's output only) makes the loss a quadratic in the layer's weights: one
    exact Newton step (no Tikhonov term, CG to convergence) lands on the masked least squares,
    the OBC reconstruction of the dense output on the pruned layer's inputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    batches = _vectors(64, 6)
    options = {
        "k_step": "1",
        "tikhonov": "0",
        "cg_tol": "1e-14",
        "cg_iter": "200",
        "newton_steps": "1",
        "warm_start": "false",
        "samples": "64",
        "batch_size": "64",
        "layer_cap": "1.0",
    }
    method = baselines.get_method("snows", options)
    pruned = copy.deepcopy(net)
    result = method.prune(pruned, 0.5, _ctx(lambda n, bs: batches))
    x = batches[0][0]
    inputs = {"0.weight": x, "2.weight": torch.relu(pruned[0](x)).detach()}
    for name, layer in (("0.weight", net[0]), ("2.weight", net[2])):
        keep = result.masks[name]
        h = (inputs[name].T @ inputs[name]).expand(len(keep), -1, -1)
        expected = reconstruct(layer.weight.detach(), h, keep)
        got = dict(pruned.named_parameters())[name].detach()
        torch.testing.assert_close(got, expected, atol=1e-8, rtol=0)
        assert result.layer_info[name]["kstep_loss"] < result.layer_info[name]["kstep_loss_masked"]


def test_hessian_vector_products_equal_the_explicit_hessian() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    dense = copy.deepcopy(net)
    with torch.no_grad():
        net[0].weight.mul_(torch.rand(3, 4, dtype=torch.float64) > 0.4)
    x = _vectors(16, 4)[0][0]
    goal = [t.detach() for t in Window(dense, "0", "0", 3).run(x)]
    window = Window(net, "0", "0", 3)
    weight = net[0].weight
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(2)) > 0.3

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        h = torch.func.functional_call(net[0], {"weight": w, "bias": net[0].bias}, (x,))
        return kstep_loss(goal, [h, torch.tanh(h), net[2](torch.tanh(h))])

    explicit = torch.autograd.functional.hessian(loss_of, weight.detach()).reshape(12, 12)
    weight.requires_grad_(True)
    loss = kstep_loss(goal, window.run(x))
    torch.testing.assert_close(loss, loss_of(weight.detach()))  # the window is the 3 operations
    (gradient,) = torch.autograd.grad(loss, weight, create_graph=True)
    product = masked_hvp(gradient * mask, weight, mask)
    v = torch.randn(int(mask.sum()), dtype=torch.float64)
    flat = mask.flatten()
    torch.testing.assert_close(product(v), explicit[flat][:, flat] @ v, atol=1e-10, rtol=1e-8)


def test_block_of_is_the_sequential_element_holding_the_layer() -> None:
    from reflow.cifar_resnet import cifar_resnet

    model = cifar_resnet(20, width=4)
    assert block_of(model, "layer2.1.conv2") == "layer2.1"
    assert block_of(model, "conv1") == "" and block_of(model, "linear") == ""


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        )
    ).eval()


def _image_ctx() -> baselines.PruneContext:
    data = tiny_data()
    return _ctx(lambda n, bs: data.train_sample(n, bs, 0, "activations"))


FAST = {"samples": "32", "batch_size": "16", "k_step": "3", "cg_iter": "30"}


def test_snows_lowers_the_k_step_loss_and_keeps_the_mask() -> None:
    net = _small_cnn()
    method = baselines.get_method("snows", FAST)
    pruned = copy.deepcopy(net)
    result = method.prune(pruned, 0.6, _image_ctx())
    assert sparsity_of(result.masks).sparsity == pytest.approx(0.6, abs=1e-3)
    for name, p in pruned.named_parameters():
        if name in result.masks:
            assert not p[~result.masks[name]].any()  # pruned weights stay zero
    for facts in result.layer_info.values():
        assert facts["kstep_loss"] <= facts["kstep_loss_start"]
    assert result.info["kstep_loss"] < result.info["kstep_loss_masked"]


def test_the_mp_mask_caps_every_layer() -> None:
    net = _small_cnn()
    method = baselines.get_method("snows", {**FAST, "layer_cap": "0.7"})
    masks = method.start_masks(net, 0.6, _image_ctx())
    assert sparsity_of(masks).sparsity == pytest.approx(0.6, abs=1e-3)
    densities = {n: float(m.float().mean()) for n, m in masks.items()}
    assert min(densities.values()) >= 0.3 - 1e-9
    with pytest.raises(baselines.base.ReflowError, match=r"cannot reach sparsity 0\.75"):
        method.start_masks(net, 0.75, _image_ctx())  # every layer at most 70%: refused
    uncapped = baselines.get_method("snows", {**FAST, "layer_cap": "1.0"})
    assert torch.equal(
        uncapped.start_masks(net, 0.6, _image_ctx())["0.weight"],
        baselines.get_method("mp").prune(copy.deepcopy(net), 0.6, _image_ctx()).masks["0.weight"],
    )


def test_snows_starts_from_another_methods_mask() -> None:
    net = _small_cnn()
    assert baselines.get_method("snows", {"mask": "snip"}).needs == {"activations", "train_data"}
    method = baselines.get_method("snows", {**FAST, "mask": "random"})
    masks = method.start_masks(net, 0.6, _image_ctx())
    drawn = baselines.get_method("random").prune(copy.deepcopy(net), 0.6, _image_ctx()).masks
    assert all(torch.equal(masks[n], drawn[n]) for n in masks)
    with pytest.raises(baselines.base.ReflowError, match="removes whole channels"):
        baselines.get_method("snows", {"mask": "l1_channel"})


def test_snows_keeps_an_n_m_pattern() -> None:
    from reflow.masks import Pattern, follows_pattern

    net = _small_cnn()
    ctx = _image_ctx()
    ctx.pattern = Pattern(2, 4)
    pruned = copy.deepcopy(net)
    result = baselines.get_method("snows", FAST).prune(pruned, 0.5, ctx)
    assert follows_pattern(result.masks, ctx.pattern)
    assert not result.masks["3.weight"].all()  # the 8-input conv follows 2:4
    for name, p in pruned.named_parameters():
        if name in result.masks:
            assert not p[~result.masks[name]].any()
    assert result.info["kstep_loss"] < result.info["kstep_loss_masked"]
