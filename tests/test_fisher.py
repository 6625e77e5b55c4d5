"""OBS algebra against brute force on a quadratic, and the two block inverses against each other."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from reflow.baselines.base import PruneContext
from reflow.baselines.fisher import (
    BlockFisher,
    BlockLayout,
    obs_loss_increase,
    obs_statistic,
    obs_update_exact,
    obs_update_woodfisher,
)
from reflow.baselines.gradients import per_sample_gradients
from torch import nn

from reflow import baselines
from reflow.errors import ReflowError


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons need float64; restore the default for other modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _quadratic(d: int = 8, n: int = 200, seed: int = 0):
    """Least squares: loss(w) = ||Xw - y||² / (2n), Hessian H = XᵀX/n, optimum w*."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(
        d, d, generator=g, dtype=torch.float64
    )
    y = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)

    def loss(v: torch.Tensor) -> float:
        return float(((x @ v - y) ** 2).sum() / (2 * n))

    return x, y, w, x.T @ x / n, loss


def test_exact_obs_update_matches_brute_force_constrained_optimum() -> None:
    x, y, w, hessian, loss = _quadratic()
    pruned = torch.tensor([True, False, True, False, False, True, False, False])
    inverse = torch.linalg.inv(hessian)
    delta = obs_update_exact(w[None], inverse[None], pruned[None])[0]
    new = w + delta
    # Brute force: best least-squares fit using only the surviving features.
    keep = ~pruned
    best = torch.zeros_like(w)
    best[keep] = torch.linalg.lstsq(x[:, keep], y.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(new, best, rtol=1e-8, atol=1e-10)
    assert torch.all(new[pruned].abs() < 1e-10)
    predicted = float(obs_loss_increase(w[None], inverse[None], pruned[None])[0])
    assert predicted == pytest.approx(loss(new) - loss(w), rel=1e-8)


def test_single_weight_statistic_is_the_loss_increase() -> None:
    _, _, w, hessian, loss = _quadratic(seed=1)
    inverse = torch.linalg.inv(hessian)
    stat = obs_statistic(w[None], inverse[None])[0]
    for q in range(len(w)):
        pruned = torch.zeros(len(w), dtype=torch.bool)
        pruned[q] = True
        new = w + obs_update_exact(w[None], inverse[None], pruned[None])[0]
        assert float(stat[q]) == pytest.approx(loss(new) - loss(w), rel=1e-8)


def test_woodfisher_form_equals_exact_for_one_weight_and_differs_for_several() -> None:
    _, _, w, hessian, _ = _quadratic(seed=2)
    inverse = torch.linalg.inv(hessian)[None]
    one = torch.zeros(1, 8, dtype=torch.bool)
    one[0, 3] = True
    torch.testing.assert_close(
        obs_update_woodfisher(w[None], inverse, one), obs_update_exact(w[None], inverse, one)
    )
    several = torch.tensor([[True, True, False, False, True, False, False, False]])
    assert not torch.allclose(
        obs_update_woodfisher(w[None], inverse, several),
        obs_update_exact(w[None], inverse, several),
    )


def test_batched_blocks_with_different_pruned_counts() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 6, 6, generator=g, dtype=torch.float64)
    inverse = a @ a.transpose(1, 2) + torch.eye(6)
    w = torch.randn(5, 6, generator=g, dtype=torch.float64)
    pruned = torch.rand(5, 6, generator=g) < 0.5
    pruned[0] = False  # a block with nothing pruned moves nothing
    delta = obs_update_exact(w, inverse, pruned)
    for b in range(5):
        k = pruned[b].nonzero().squeeze(-1)
        expected = torch.zeros(6, dtype=torch.float64)
        if len(k):
            expected = -inverse[b][:, k] @ torch.linalg.solve(inverse[b][k][:, k], w[b, k])
        torch.testing.assert_close(delta[b], expected)


def test_woodbury_and_direct_inverses_agree() -> None:
    g = torch.Generator().manual_seed(4)
    params = {"a": torch.zeros(3, 7), "b": torch.zeros(10)}  # 21 + 10 weights, B = 8: padding
    layout = BlockLayout.of(params, 8)
    grads = [
        {"a": torch.randn(5, 3, 7, generator=g), "b": torch.randn(5, 10, generator=g)}
        for _ in range(4)
    ]
    direct = BlockFisher(layout, 20, 1e-2, "direct")
    woodbury = BlockFisher(layout, 20, 1e-2, "woodbury")
    for batch in grads:
        direct.add_batch(batch)
        woodbury.add_batch(batch)
    torch.testing.assert_close(direct.inverse(), woodbury.inverse(), rtol=1e-8, atol=1e-8)
    # and both equal the inverse of λI + GᵀG/N built by hand for the first block
    flat = torch.cat([b["a"].reshape(5, -1)[:, :8] for b in grads])
    by_hand = torch.linalg.inv(1e-2 * torch.eye(8) + flat.T @ flat / 20)
    torch.testing.assert_close(direct.inverse()[0], by_hand)


def test_block_layout_round_trip_and_padding() -> None:
    params = {"a": torch.arange(21.0).view(3, 7), "b": torch.arange(10.0)}
    layout = BlockLayout.of(params, 8)
    assert layout.blocks_per_layer == [3, 2]
    blocks = layout.to_blocks(params)
    assert blocks.shape == (5, 8)
    back = layout.from_blocks(blocks)
    assert all(torch.equal(back[n], params[n]) for n in params)
    assert int(layout.padding().sum()) == 3 + 6


def test_fisher_refuses_oversized_blocks() -> None:
    layout = BlockLayout.of({"w": torch.zeros(10**6)}, 1000)
    with pytest.raises(ReflowError, match=r"Fisher blocks need 7\.5 GiB"):
        BlockFisher(layout, 10, 1e-5, memory_limit_gb=1.0)


@pytest.mark.parametrize(("group", "chunk"), [(1, 4), (2, 2), (2, 10)])
def test_per_sample_gradients_match_a_loop(group: int, chunk: int) -> None:
    """Both paths: vmap (one sample per gradient) and the backward loop (mini-batches)."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
        .double()
        .eval()
    )
    x, y = torch.randn(6, 5), torch.randint(3, (6,))
    params = {"0.weight": model[0].weight, "3.weight": model[3].weight}
    chunks = list(per_sample_gradients(model, params, x, y, F.cross_entropy, group, chunk))
    grads = {n: torch.cat([c[n] for c in chunks]) for n in params}
    assert grads["0.weight"].shape[0] == 6 // group
    for i in range(6 // group):
        model.zero_grad()
        rows = slice(group * i, group * (i + 1))
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        torch.testing.assert_close(grads["0.weight"][i], model[0].weight.grad)
        torch.testing.assert_close(grads["3.weight"][i], model[3].weight.grad)


def test_wf_u_beats_wf_s_on_training_loss() -> None:
    """On a small MLP, the OBS update must lower the loss of the pruned model at the same mask."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(512, 10), torch.randint(4, (512,))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def ctx() -> PruneContext:
        return PruneContext(
            torch.Generator().manual_seed(0),
            torch.device("cpu"),
            train_sample=lambda n, bs: [(x[:bs], y[:bs])],
        )

    options = {"num_grads": "512", "block_size": "16", "damp": "1e-4"}
    losses = {}
    for name in ("wf_s", "wf_u"):
        work = copy.deepcopy(model)
        result = baselines.get_method(name, options).prune(work, 0.6, ctx())
        with torch.no_grad():
            for n, p in work.named_parameters():
                if n in result.masks:
                    p.mul_(result.masks[n])
            losses[name] = float(F.cross_entropy(work(x), y))
    assert losses["wf_u"] < losses["wf_s"]


def test_diagonal_blocks_equal_the_general_path() -> None:
    g = torch.Generator().manual_seed(5)
    layout = BlockLayout.of({"w": torch.zeros(10)}, 1)
    grads = {"w": torch.randn(7, 10, generator=g)}
    diagonal = BlockFisher(layout, 7, 1e-3)
    diagonal.add_batch(grads)
    expected = 1 / (1e-3 + grads["w"].square().mean(0))
    torch.testing.assert_close(diagonal.inverse().reshape(-1), expected)
