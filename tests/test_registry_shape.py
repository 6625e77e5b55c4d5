"""One registry shape: every extensible area declares name, summary, Config (options with help,
choices and bounds), requires/extra, and applies_to; optional packages are reported one way."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from reflow import baselines
from reflow.executors import EXECUTORS
from reflow.repairs import REPAIRS, get_repair


@pytest.mark.parametrize(
    "registry", [baselines.METHODS, REPAIRS, EXECUTORS], ids=["methods", "repairs", "executors"]
)
def test_every_registered_thing_has_the_one_shape(registry) -> None:
    for name, cls in registry.items():
        assert cls.name == name and cls.summary, name
        assert isinstance(cls.requires, tuple) and isinstance(cls.extra, str), name
        assert not cls.requires or cls.extra, f"{name}: requires without the extra to install"
        for f in dataclasses.fields(cls.Config):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"


def test_a_missing_optional_package_is_one_line_with_its_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch_pruning" else real(name, *a),
    )
    reason = baselines.get_method("l1_channel").applies_to(nn.Linear(2, 2))
    assert reason == (
        "method l1_channel needs torch_pruning, which is not installed: pip install -e "
        '".[structured]" (or pip install torch_pruning)'
    )


def test_a_composite_repair_passes_its_options_to_its_steps() -> None:
    composite = get_repair("reflow+statcorr", {"min_std": "0.25"})
    statcorr = next(s for s in composite.steps if s.name == "statcorr")
    assert statcorr.config.min_std == 0.25
    assert get_repair("reflow+statcorr").steps[1].config == get_repair("statcorr").config


def test_models_register_where_they_are_defined() -> None:
    from reflow.zoo import MODELS

    where = {name: entry.build.__module__ for name, entry in MODELS.items()}
    assert where["resnet20"] == where["resnet20_ln"] == "reflow.cifar_resnet"
    assert where["mobilenet_v1"] == "reflow.mobilenet"
    assert where["resnet50"] == "reflow.zoo"  # torchvision's architectures, registered by the zoo
