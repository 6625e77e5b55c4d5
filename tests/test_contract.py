"""The adapter contract, checked for every registered method (a new method is covered for free)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_data, trained_like
from reflow.baselines.base import NEEDS, PruneContext
from torch import nn

from reflow import baselines
from reflow.cifar_resnet import cifar_resnet
from reflow.data import ImageData
from reflow.masks import prunable_parameters, sparsity_of
from reflow.norms import batchnorm_layers
from reflow.timing import PhaseTimer

#: Small settings so that data-hungry methods stay fast in unit tests.
FAST = {
    "snip": {"batches": "2", "batch_size": "8"},
    "obd": {"num_grads": "16"},
    "wf_s": {"num_grads": "16", "block_size": "64"},
    "wf_u": {"num_grads": "16", "block_size": "64"},
    "mp_u": {"num_grads": "16", "block_size": "64"},
    "chita_s": {"num_grads": "16", "iterations": "5"},
    "chita_u": {"num_grads": "16", "iterations": "5"},
    "cbs_s": {"num_grads": "16", "iterations": "5"},
    "cbs_u": {"num_grads": "16", "iterations": "5"},
    "mfac": {"num_grads": "4", "grad_batch_size": "4", "steps": "2"},
    "obc": {"samples": "16", "batch_size": "8"},
    "sparsegpt": {"samples": "16", "batch_size": "8"},
    "sparsegpt_s": {"samples": "16", "batch_size": "8"},
    "wanda": {"samples": "16", "batch_size": "8"},
    "alps": {"samples": "16", "batch_size": "8", "max_iter": "30"},
    "alps_s": {"samples": "16", "batch_size": "8", "max_iter": "30"},
    "osscar": {"samples": "16", "batch_size": "8"},
    "snows": {
        "samples": "16",
        "batch_size": "8",
        "k_step": "2",
        "cg_iter": "5",
        "newton_steps": "1",
    },
}


def make_method(name: str) -> baselines.Method:
    return baselines.get_method(name, FAST.get(name))


def make_ctx(
    method: baselines.Method, data: ImageData, seed: int = 0, scope: str = "all"
) -> PruneContext:
    def stream(name: str):
        return lambda n, bs: data.train_sample(n, bs, seed, name)

    return PruneContext(
        torch.Generator().manual_seed(seed),
        torch.device("cpu"),
        scope,
        train_sample=stream("gradients") if "train_data" in method.needs else None,
        activation_sample=stream("activations") if "activations" in method.needs else None,
        timer=PhaseTimer(),
    )


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """ResNet-20's structure (19 BN layers, option-A shortcuts) at a quarter of its width, so
    that the O(rows · columns³) layer-wise solvers run every contract check in seconds."""
    torch.manual_seed(0)
    return trained_like(cifar_resnet(20, width=4))


METHODS = baselines.list_methods()


def test_registry_is_not_empty_and_names_are_unique() -> None:
    assert {"mp", "mp_layer", "random"} <= set(METHODS)
    assert len(METHODS) == len(set(METHODS))


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(Exception, match="registered twice"):
        baselines.register(baselines.get_method_class("mp"))


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(Exception, match=r"valid methods: .*mp"):
        baselines.get_method("magnitude")


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("scope", ["all", "blocks"])
def test_masks_cover_scope_and_meet_sparsity(name: str, scope: str, model: nn.Module) -> None:
    method = make_method(name)
    work = copy.deepcopy(model)
    result = method.prune(work, 0.7, make_ctx(method, tiny_data(), scope=scope))
    params = prunable_parameters(model, scope)
    assert result.masks.keys() == params.keys()
    for n, mask in result.masks.items():
        assert mask.shape == params[n].shape and mask.dtype == torch.bool
    tolerance = 0.05 if method.structured else 1e-3  # channel granularity
    assert sparsity_of(result.masks).sparsity == pytest.approx(0.7, abs=tolerance)


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_mask(name: str, model: nn.Module) -> None:
    method = make_method(name)
    runs = [
        method.prune(copy.deepcopy(model), 0.5, make_ctx(method, tiny_data(), seed=3))
        for _ in range(2)
    ]
    for n in runs[0].masks:
        assert torch.equal(runs[0].masks[n], runs[1].masks[n]), n


@pytest.mark.parametrize("name", METHODS)
def test_needs_are_declared_and_honoured(name: str, model: nn.Module) -> None:
    method = make_method(name)
    assert method.needs <= NEEDS
    ctx = make_ctx(method, tiny_data())
    if "train_data" not in method.needs:
        assert ctx.train_sample is None  # works without train data
    if "activations" not in method.needs:
        assert ctx.activation_sample is None
    method.prune(copy.deepcopy(model), 0.5, ctx)


@pytest.mark.parametrize("name", METHODS)
def test_no_bn_statistic_touched_and_weights_only_if_declared(name: str, model: nn.Module) -> None:
    method = make_method(name)
    work = copy.deepcopy(model)
    modes = {n: m.training for n, m in work.named_modules()}
    result = method.prune(work, 0.6, make_ctx(method, tiny_data()))
    for bn_name, bn in batchnorm_layers(work).items():
        ref = batchnorm_layers(model)[bn_name]
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(bn, buf), getattr(ref, buf)), f"{bn_name}.{buf}"
    assert {n: m.training for n, m in work.named_modules()} == modes
    original = dict(model.named_parameters())
    for n, p in work.named_parameters():
        if method.updates_weights and n in result.masks:
            continue
        assert torch.equal(p, original[n]), f"{name} changed {n}"
    assert all(p.grad is None for p in work.parameters())
