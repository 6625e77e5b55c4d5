import copy

import pytest
import torch
import torch.nn.functional as F
from reflow.baselines.base import PruneContext
from torch import nn

from reflow import baselines
from reflow.errors import ReflowError
from reflow.masks import global_masks, layer_densities, sparsity_of


class TwoLayers(nn.Module):
    """A net where global MP empties ``small`` at high sparsity: its weights are tiny."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(20, 20, bias=False)
        self.small = nn.Linear(20, 4, bias=False)
        with torch.no_grad():
            self.big.weight.copy_(torch.linspace(1.0, 2.0, 400).view(20, 20))
            self.small.weight.copy_(torch.linspace(0.001, 0.01, 80).view(4, 20))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(torch.relu(self.big(x)))


def _ctx(data=None) -> PruneContext:
    return PruneContext(torch.Generator().manual_seed(0), torch.device("cpu"), train_sample=data)


def test_global_mp_would_empty_a_layer_but_mp_mt_keeps_the_minimum() -> None:
    model = TwoLayers()
    mp = baselines.get_method("mp").prune(model, 0.5, _ctx())
    assert layer_densities(mp.masks)["small.weight"] == 0.0  # layer collapse under global MP

    mt = baselines.get_method("mp_mt", {"min_density": "0.1", "min_count": "5"}).prune(
        model, 0.5, _ctx()
    )
    kept_small = int(mt.masks["small.weight"].sum())
    assert kept_small == 8  # ceil(0.1 * 80) > 5
    assert sparsity_of(mt.masks).pruned == 240  # target met exactly
    # the kept small-layer weights are its largest ones
    assert mt.masks["small.weight"].view(-1)[-8:].all()


def test_mp_mt_min_count_wins_when_larger() -> None:
    mt = baselines.get_method("mp_mt", {"min_density": "0.0", "min_count": "12"})
    masks = mt.prune(TwoLayers(), 0.5, _ctx()).masks
    assert int(masks["small.weight"].sum()) == 12


def test_mp_mt_equals_mp_when_no_layer_is_near_empty() -> None:
    model = TwoLayers()
    mp = baselines.get_method("mp").prune(model, 0.1, _ctx())
    mt = baselines.get_method("mp_mt").prune(model, 0.1, _ctx())
    assert all(torch.equal(mp.masks[n], mt.masks[n]) for n in mp.masks)


def test_mp_mt_says_when_target_is_unreachable() -> None:
    mt = baselines.get_method("mp_mt", {"min_density": "0.6"})
    with pytest.raises(ReflowError, match=r"cannot reach sparsity 0.5 .*at most 0.4000"):
        mt.prune(TwoLayers(), 0.5, _ctx())


def test_mp_mt_config_validates() -> None:
    with pytest.raises(
        ReflowError, match=r"mp_mt: min_density must be at least 0.0 and at most 1.0"
    ):
        baselines.get_method("mp_mt", {"min_density": "1.5"})
    with pytest.raises(ReflowError, match="mp_mt: min_count must be at least 0"):
        baselines.get_method("mp_mt", {"min_count": "-1"})


def test_snip_equals_hand_computation() -> None:
    torch.manual_seed(0)
    model = TwoLayers()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(6, 20, generator=g), torch.randint(4, (6,), generator=g)) for _ in range(3)
    ]
    snip = baselines.get_method("snip", {"batches": "3", "batch_size": "6"})
    result = snip.prune(model, 0.6, _ctx(lambda n, bs: batches[:n]))

    # By hand: gradient of the mean loss over the union of the batches, times the weight.
    ref = copy.deepcopy(model)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    F.cross_entropy(ref(x), y).backward()
    scores = {n: (p.grad * p.detach()).abs() for n, p in ref.named_parameters()}
    expected = global_masks(scores, 0.6)
    for n in expected:
        assert torch.equal(result.masks[n], expected[n]), n
    assert result.info["grad_samples"] == 18
    assert all(p.grad is None for p in model.parameters())


def test_snip_without_data_is_a_clear_error() -> None:
    with pytest.raises(ReflowError, match="needs train data"):
        baselines.get_method("snip").prune(TwoLayers(), 0.5, _ctx())
